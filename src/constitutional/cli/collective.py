"""`cai collective analyze`: opinion groups, consensus and division from exported votes.

`run_analyze` is the Python entry point; the typer command only parses options and calls it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from constitutional.cli.collective_constitution import parse_k, to_constitution
from constitutional.errors import UserError

app = typer.Typer(
    help="Collective constitution: public input, opinion groups, consensus.", no_args_is_help=True
)


def run_analyze(
    votes: str | Path,
    comments: str | Path | None = None,
    out: str | Path | None = None,
    **config: Any,
) -> dict[str, Any]:
    """Load votes (and texts), analyse them with `AnalysisConfig(**config)`, write `out` atomically."""
    from constitutional.collective import AnalysisConfig, analyze, load_votes
    from constitutional.jsonl import write_json

    result = analyze(load_votes(votes, comments), AnalysisConfig(**config))
    if out is not None:
        write_json(out, result)
    return result


@app.command()
def analyze(
    votes: Path = typer.Argument(
        ..., help="Votes CSV: participant,statement,vote (1/-1/0) or a Polis votes.csv export."
    ),
    comments: Path = typer.Argument(
        None, help="Statement texts: Polis comments.csv or statement,text."
    ),
    out: Path = typer.Option(
        None, "--out", "-o", help="JSON file to write (default: print the JSON on stdout)."
    ),
    min_votes: int = typer.Option(
        7, "--min-votes", help="Leave out participants with fewer votes."
    ),
    k: str = typer.Option(
        "2..5", "--k", help="Numbers of opinion groups to try, MIN..MAX; best silhouette wins."
    ),
    seed: int = typer.Option(0, "--seed", help="k-means seed."),
    consensus_threshold: float = typer.Option(
        0.5,
        "--consensus-threshold",
        help="Product of group agree probabilities for consensus, 0..1.",
    ),
    divisive_threshold: float = typer.Option(
        0.3, "--divisive-threshold", help="Spread of group agree probabilities for division, 0..1."
    ),
    min_rep_votes: int = typer.Option(
        3, "--min-rep-votes", help="Votes a group needs on a statement for it to be representative."
    ),
    top: int = typer.Option(
        10, "--top", help="Longest consensus, divisive and representative lists."
    ),
) -> None:
    """Find opinion groups (PCA + k-means), per-group agreement, consensus and divisive statements."""
    k_min, k_max = parse_k(k)
    result = run_analyze(
        votes,
        comments,
        out,
        min_votes=min_votes,
        k_min=k_min,
        k_max=k_max,
        seed=seed,
        consensus_threshold=consensus_threshold,
        divisive_threshold=divisive_threshold,
        min_rep_votes=min_rep_votes,
        top=top,
    )
    if out is None:
        typer.echo(json.dumps(result, indent=2, ensure_ascii=False))
        return
    people = result["participants"]
    typer.echo(
        f"{people['kept']}/{people['total']} participants, {result['statements']} statements, "
        f"{result['votes']} votes → k={result['k']}, {len(result['consensus'])} consensus, "
        f"{len(result['divisive'])} divisive → {out}",
        err=True,
    )


@app.command()
def serve(
    db: str = typer.Option(
        "collective.sqlite",
        "--db",
        envvar="CAI_COLLECTIVE_DB",
        help="SQLAlchemy URL (postgresql+psycopg://user@host/db) or a SQLite file path.",
    ),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Interface to listen on (0.0.0.0 for all)."
    ),
    port: int = typer.Option(8090, "--port", help="TCP port to listen on."),
    admin_token: str = typer.Option(
        None,
        "--admin-token",
        envvar="CAI_ADMIN_TOKEN",
        help="Secret the admin logs in with at /admin (default: a new random one, printed once).",
    ),
    secret: str = typer.Option(
        None,
        "--secret",
        envvar="CAI_COLLECTIVE_SECRET",
        help="Signs participant cookies (default: made once and kept in the database).",
    ),
    invite_only: bool = typer.Option(
        False, "--invite-only", help="Only invited participants vote, submit and count."
    ),
    participant_limit: str = typer.Option(
        "30/h",
        "--participant-limit",
        help="New participants per IP address, N/PERIOD (s, m, h) or off.",
    ),
    vote_limit: str = typer.Option(
        "600/10m", "--vote-limit", help="Votes per IP address, N/PERIOD or off."
    ),
    statement_limit: str = typer.Option(
        "10/10m", "--statement-limit", help="Statements submitted per IP address, N/PERIOD or off."
    ),
    seed: int = typer.Option(
        0, "--seed", help="Orders each participant's statements; stored per conversation."
    ),
    min_votes: int = typer.Option(
        7, "--min-votes", help="Votes a participant needs to count in the results."
    ),
) -> None:
    """Serve the voting web app: conversations, moderation, one-at-a-time voting, live results."""
    import secrets

    from constitutional.collective.web.limits import Limits, parse_rate

    for name, value in (("--admin-token", admin_token), ("--secret", secret)):
        if value is not None and len(value) < 16:
            raise UserError(f"{name} must be at least 16 characters")
    limits = Limits(
        participants=parse_rate(participant_limit, "--participant-limit"),
        votes=parse_rate(vote_limit, "--vote-limit"),
        statements=parse_rate(statement_limit, "--statement-limit"),
    )
    token = admin_token or secrets.token_urlsafe(24)
    _serve(
        db,
        host,
        port,
        token,
        admin_token is None,
        secret=secret,
        invite_only=invite_only,
        limits=limits,
        seed=seed,
        min_votes=min_votes,
    )


def _serve(db: str, host: str, port: int, token: str, made: bool, **options: Any) -> None:
    """Open the database, print where to go, and run uvicorn with tokens kept out of its access log."""
    import logging

    import uvicorn

    from constitutional.collective.web import Store, create_app, open_engine
    from constitutional.collective.web.security import RedactTokens

    engine = open_engine(db)
    app_ = create_app(Store(engine), admin_token=token, **options)
    base = f"http://{host}:{port}"
    # The token goes to the terminal only when this run made it: the admin has no other way to learn it.
    login = (
        f"log in with this admin token, made for this run: {token}"
        if made
        else "log in with your admin token"
    )
    typer.echo(
        f"collective: database {engine.url.render_as_string(hide_password=True)}\n"
        f"collective: participants at {base}/\n"
        f"collective: admin at {base}/admin ({login})",
        err=True,
    )
    server = uvicorn.Server(
        uvicorn.Config(app_, host=host, port=port, log_level="info")
    )  # configures logging
    logging.getLogger("uvicorn.access").addFilter(RedactTokens())
    server.run()


app.command("to-constitution")(to_constitution)
