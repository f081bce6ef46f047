"""`cai constitution ...`: init, validate, show, hash, diff.

Implementations are imported inside each command so `cai --help` never loads pydantic or yaml.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from constitutional.cli.regress import regress

File = Annotated[
    Path, typer.Argument(help="Constitution YAML file, or 'default' for the packaged one.")
]

app = typer.Typer(help="Write, check, hash and compare constitutions.", no_args_is_help=True)


@app.command()
def init(
    path: Annotated[Path, typer.Argument(help="Where to write the constitution.")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write the default constitution to PATH, ready to edit."""
    from constitutional.constitution import default_constitution_path
    from constitutional.errors import UserError
    from constitutional.jsonl import atomic_path

    if path.exists() and not force:
        raise UserError("already exists (use --force to overwrite)", path)
    # Copy the packaged file verbatim so its explanatory comments come along.
    with atomic_path(path) as tmp:
        tmp.write_bytes(default_constitution_path().read_bytes())
    typer.echo(f"{path}: wrote the default constitution")


@app.command()
def validate(file: File) -> None:
    """Check FILE against the schema; print a summary or the first error with its line."""
    from constitutional.constitution import load_constitution

    c = load_constitution(file)
    typer.echo(
        f"{file}: ok — {c.name} v{c.version}, {len(c.critique_revision)} critique/revision pairs, "
        f"{len(c.comparison)} comparison principles, hash {c.short_hash}"
    )


@app.command()
def show(file: File) -> None:
    """Print FILE's principles and categories as tables."""
    from rich.console import Console
    from rich.markup import escape as e
    from rich.table import Table

    from constitutional.constitution import load_constitution

    c = load_constitution(file)
    console = Console()
    # Principle text is user prose: escape it so "[...]" is never read as rich markup.
    console.print(f"[bold]{e(c.name)}[/bold] v{e(c.version)}  hash {c.hash}")
    console.print(e(c.description))
    pairs = Table("id", "critique", "revision", title="critique/revision", show_lines=True)
    for p in c.critique_revision:
        pairs.add_row(p.id, e(p.critique), e(p.revision))
    comparison = Table("id", "question", title="comparison", show_lines=True)
    for p in c.comparison:
        comparison.add_row(p.id, e(p.text))
    categories = Table("kind", "id", "description", title="categories")
    for kind, items in (("harmful", c.categories.harmful), ("harmless", c.categories.harmless)):
        for item in items:
            categories.add_row(kind, item.id, e(item.description))
    for table in (pairs, comparison, categories):
        console.print(table)
    console.print(
        f"few-shot exemplars: {len(c.fewshot.critique_revision)} critique/revision, "
        f"{len(c.fewshot.comparison)} comparison"
    )


@app.command("hash")
def hash_(file: File) -> None:
    """Print the sha256 of FILE's content (formatting and comments don't count)."""
    from constitutional.constitution import load_constitution

    typer.echo(load_constitution(file).hash)


@app.command()
def diff(
    old: Annotated[Path, typer.Argument(help="The older constitution.")],
    new: Annotated[Path, typer.Argument(help="The newer constitution.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
) -> None:
    """List principles added, removed or changed (by id) from OLD to NEW."""
    import json

    from constitutional.constitution import diff_constitutions, format_diff, load_constitution

    result = diff_constitutions(load_constitution(old), load_constitution(new))
    typer.echo(json.dumps(result, indent=2, ensure_ascii=False) if as_json else format_diff(result))


app.command("regress")(regress)
