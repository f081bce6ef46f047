"""The `cai` command line. Each command group lives in its own module and imports its heavy
implementation lazily, so `cai --help` answers fast."""

from __future__ import annotations

import os
import sys

import typer

from constitutional import __version__
from constitutional.cli.audit import app as audit_app
from constitutional.cli.collective import app as collective_app
from constitutional.cli.constitution import app as constitution_app
from constitutional.cli.eval import register as register_eval
from constitutional.cli.export import register as register_export
from constitutional.cli.guard import app as guard_app
from constitutional.cli.models import register as register_model_commands
from constitutional.cli.rbr import app as rbr_app
from constitutional.cli.report import report
from constitutional.cli.rl_cai import app as rl_cai_app
from constitutional.cli.run import run
from constitutional.cli.self_play import self_play
from constitutional.cli.sl_cai import app as sl_cai_app
from constitutional.errors import BackendError, UserError

app = typer.Typer(
    name="cai",
    help="Constitutional AI: make a model harmless from a written constitution.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(constitution_app, name="constitution")
app.add_typer(sl_cai_app, name="sl-cai")
app.add_typer(rl_cai_app, name="rl-cai")
app.command("self-play")(self_play)
register_model_commands(app)
register_export(app)
app.command("run")(run)
app.command("report")(report)
register_eval(app)
app.add_typer(audit_app, name="audit")
app.add_typer(guard_app, name="guard")
app.add_typer(collective_app, name="collective")
app.add_typer(rbr_app, name="rbr")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"cai {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print the version and exit.",
    ),
    precision: str = typer.Option(
        None,
        "--precision",
        envvar="CAI_PRECISION",
        help="Local models: fp32 (default) or int8 (quantised Linear weights, ~1.7x faster on CPU).",
    ),
    threads: int = typer.Option(
        None,
        "--threads",
        envvar="CAI_THREADS",
        min=1,
        help="Local models: CPU threads for torch (default: torch's choice, one per core).",
    ),
) -> None:
    """Constitutional AI: make a model harmless from a written constitution."""
    # Engine settings for every local backend this command builds, however deep (recipes,
    # guards, self-play): set once here, read where a model is loaded.
    if precision is not None:
        os.environ["CAI_PRECISION"] = precision
    if threads is not None:
        os.environ["CAI_THREADS"] = str(threads)


def main() -> None:
    """Entry point: user mistakes become one line on stderr and exit code 2."""
    try:
        app()
    except (UserError, BackendError) as e:
        print(f"cai: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("cai: interrupted", file=sys.stderr)
        sys.exit(130)
