"""`cai constitution ...`: init, validate, show, hash, diff."""

import typer

app = typer.Typer(help="Write, check, hash and compare constitutions.", no_args_is_help=True)
