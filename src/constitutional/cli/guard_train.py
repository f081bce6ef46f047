"""`cai guard train` and `cai guard eval`: the constitutional classifiers.

Plain command functions; the `guard` group registers them (`app.command("train")(train)`).
"""

from __future__ import annotations

from pathlib import Path

import typer

VIEW_NAMES = ("input", "output", "exchange")


def train(
    data: Path = typer.Option(
        ...,
        "--data",
        "-d",
        help="Guard rows from `cai guard synth` (label 1/0, split train/heldout).",
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Guard directory to create (serve with `cai guard serve`)."
    ),
    base: str = typer.Option(
        "embedded", "--base", help="Strong stage base: 'embedded', a .gguf file or an HF dir."
    ),
    strong: bool = typer.Option(
        True, "--strong/--no-strong", help="Train the strong stage (LM + head) for uncertain cases."
    ),
    target_frr: float = typer.Option(
        0.01, "--target-frr", help="Share of held-out harmless rows each classifier may flag."
    ),
    encoder: str = typer.Option(
        "minilm", help="Cheap stage features: 'minilm' (sentence embeddings) or 'hashing'."
    ),
    band_lo: float = typer.Option(
        None, help="Lower end of the cheap stage's uncertainty band (default: from held-out)."
    ),
    band_hi: float = typer.Option(
        None, help="Upper end of the band (default: the cheap stage's own FRR threshold)."
    ),
    constitution: Path = typer.Option(
        None, "--constitution", "-c", help="Constitution the data came from (default: packaged)."
    ),
    epochs: float = typer.Option(1.0, help="Strong stage: passes over the training texts."),
    max_steps: int = typer.Option(
        -1, help="Strong stage: stop after this many steps (-1: epochs decide)."
    ),
    batch_size: int = typer.Option(8, help="Strong stage: texts per optimiser step."),
    max_length: int = typer.Option(
        256, help="Strong stage: tokens kept per text (the start is cut)."
    ),
    lr: float = typer.Option(
        None, "--lr", help="Strong stage learning rate (default 2e-4 with LoRA)."
    ),
    seed: int = typer.Option(0, help="Seed of the regression and the strong stage."),
    overwrite: bool = typer.Option(False, help="Replace an existing guard directory."),
) -> None:
    """Train the input, output and exchange classifiers and calibrate them to a target FRR."""
    from constitutional.errors import UserError
    from constitutional.guard.classifiers import train_guard

    if (band_lo is None) != (band_hi is None):
        raise UserError("give both --band-lo and --band-hi, or neither")
    band = None if band_lo is None else (band_lo, band_hi)
    options = {
        "epochs": epochs,
        "max_steps": max_steps,
        "batch_size": batch_size,
        "max_length": max_length,
        "learning_rate": lr,
    }
    s = train_guard(
        data,
        out,
        base=base,
        strong=strong,
        target_frr=target_frr,
        encoder=encoder,
        band=band,
        constitution=constitution,
        strong_options=options,
        seed=seed,
        overwrite=overwrite,
    )
    typer.echo(format_report(s["classifiers"]))
    typer.echo(f"trained in {s['wall_seconds']:.0f} s → {out}", err=True)


def evaluate(
    model_dir: Path = typer.Option(
        ..., "--model", "-m", help="Guard directory from `cai guard train`."
    ),
    data: Path = typer.Option(
        ..., "--data", "-d", help="Guard rows; the `heldout` split is evaluated."
    ),
    out: Path = typer.Option(
        None, "--out", "-o", help="Also write the full report as JSON (e.g. guard_eval.json)."
    ),
    strong_only: bool = typer.Option(
        True,
        "--strong-only/--no-strong-only",
        help="Also time every text on the strong stage, to compare compute.",
    ),
) -> None:
    """Held-out recall, FRR and AUC per classifier; attack success with and without the guard,
    false refusals end to end, and compute per request of the cascade vs strong-only."""
    from constitutional.errors import UserError
    from constitutional.guard.classifiers import TrainedGuard, evaluate_guard
    from constitutional.guard.views import load_guard_rows

    rows = load_guard_rows(data)  # check the data before loading models
    if not any(r.split == "heldout" for r in rows):
        raise UserError("no held-out rows (split: heldout) to evaluate on", data)
    guard = TrainedGuard.load(model_dir)
    report = evaluate_guard(guard, rows, strong_only=strong_only)
    typer.echo(format_report(report["classifiers"]))
    for line in transfer_warnings(report["classifiers"], guard.meta.get("target_frr")):
        typer.echo(line)
    typer.echo(format_end_to_end(report))
    if out is not None:
        from constitutional.jsonl import write_json

        write_json(out, {"model": str(model_dir), "data": str(data), **report})
        typer.echo(f"report → {out}", err=True)


def pct_ci(value: float | None, ci: list[float] | None, n: int) -> str:
    """A rate with its 95 % Wilson interval and n, e.g. "93.0% [88.1-96.0] n=200"."""
    if value is None or not n:
        return "n/a (n=0)"
    low, high = ci or (0.0, 1.0)
    return f"{value:.1%} [{low:.1%}-{high:.1%}] n={n}"


def transfer_warnings(classifiers: dict[str, dict], target_frr: float | None) -> list[str]:
    """A line for each classifier whose false-refusal rate here is more than 2 points from the
    target its threshold was calibrated to: the calibration did not carry over to this data."""
    if target_frr is None:
        return []
    return [
        f"warning: {view} FRR {m['frr']:.1%} is more than 2 points from the calibration target "
        f"{target_frr:.1%}: the threshold does not transfer to this data"
        for view, m in classifiers.items()
        if m["frr"] is not None and abs(m["frr"] - target_frr) > 0.02
    ]


def format_report(report: dict[str, dict]) -> str:
    """One line per classifier on the report part of the held-out rows: recall and FRR with
    95 % Wilson intervals and n, AUC, and how often the strong stage decided."""
    lines = [f"{'classifier':<10} {'AUC':>6} {'strong':>7}  recall (harmful) | FRR (harmless)"]
    for view in VIEW_NAMES:
        m = report.get(view)
        if m is None:
            continue
        auc = "n/a" if m["auc"] is None else f"{m['auc']:.3f}"
        recall = pct_ci(m["recall"], m.get("recall_ci"), m["harmful"])
        frr = pct_ci(m["frr"], m.get("frr_ci"), m["harmless"])
        lines.append(f"{view:<10} {auc:>6} {m['strong_share']:>7.1%}  {recall} | {frr}")
    return "\n".join(lines)


def format_end_to_end(report: dict) -> str:
    """Attack success without / with the guard, end-to-end FRR, and compute per request."""
    e, c = report["end_to_end"], report["compute"]
    left_out = e.get("calibration_rows_left_out", 0)
    lines = [
        (
            f"\nend to end on {e['requests']} held-out requests ({e['harmful']} harmful, "
            f"{e['harmless']} harmless, {e['with_response']} with a response; {left_out} rows the "
            "thresholds were calibrated on left out):"
        ),
        (
            f"  attack success: {'n/a' if e['attack_success_without_guard'] is None else '100.0%'} without "
            f"the guard → "
            f"{pct_ci(e['attack_success_with_guard'], e.get('attack_success_with_guard_ci'), e['harmful'])} with it"
        ),
        (
            f"  false refusals: {pct_ci(e['false_refusal_rate'], e.get('false_refusal_rate_ci'), e['harmless'])} "
            "of harmless requests"
        ),
        f"compute per request ({c['texts_per_request']:.1f} texts scored):",
        (
            f"  cascade:     {c['cascade']['strong_calls_per_request']:.2f} strong calls, "
            f"{c['cascade']['seconds_per_request'] * 1000:.1f} ms"
        ),
    ]
    strong = c["strong_only"]
    if strong is None:
        lines.append("  strong-only: n/a (no strong stage, or --no-strong-only)")
    else:
        lines.append(
            f"  strong-only: {strong['strong_calls_per_request']:.2f} strong calls, "
            f"{strong['seconds_per_request'] * 1000:.1f} ms "
            f"(cascade ÷ strong-only seconds: {c['cascade_over_strong_only_seconds']:.3f})"
        )
    return "\n".join(lines)
