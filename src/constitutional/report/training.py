"""The training section: per-step curves of every checkpoint directory in the run.

SFT and DPO log a loss, the preference model a loss, PPO its reward, KL and losses; whichever of
the known metrics a log holds is drawn, one small panel each, against the optimiser step.
"""

from __future__ import annotations

from constitutional.report import plots
from constitutional.report.html import esc, figure, not_run, section, table
from constitutional.report.load import Checkpoint, RunArtifacts

ANCHOR, TITLE = "training", "Training"
# In order of interest; at most MAX_PANELS are drawn so the row stays readable.
METRICS = (
    "loss",
    "reward",
    "kl",
    "policy_loss",
    "value_loss",
    "rewards/margins",
    "rewards/accuracies",
)
MAX_PANELS = 4
SUMMARY_KEYS = (
    "steps",
    "final_loss",
    "reward_first",
    "reward_last",
    "accuracy",
    "ece",
    "wall_seconds",
    "device",
)


def render(run: RunArtifacts) -> tuple[str, str, str]:
    if not run.checkpoints:
        return (
            ANCHOR,
            TITLE,
            not_run(
                ANCHOR, TITLE, "no checkpoint directory with a train_log.json in the run directory."
            ),
        )
    body = "".join(_checkpoint(c, i) for i, c in enumerate(run.checkpoints))
    return ANCHOR, TITLE, section(ANCHOR, TITLE, body)


def logged_metrics(log: list[dict]) -> list[str]:
    """The known metrics that at least one log entry holds as a number."""
    present = [m for m in METRICS if any(isinstance(e.get(m), int | float) for e in log)]
    return present[:MAX_PANELS]


def _checkpoint(c: Checkpoint, index: int) -> str:
    stage = c.info.get("stage")
    out = f"<h3><code>{esc(c.name)}/</code>{' · ' + esc(stage) if stage else ''}</h3>"
    summary = [(k.replace("_", " "), c.info[k]) for k in SUMMARY_KEYS if c.info.get(k) is not None]
    if summary:
        out += table(["", "value"], summary, numeric=[False, True])
    metrics = logged_metrics(c.log)
    if not metrics:
        return out + '<p class="not-run">The log holds no per-step metric to plot.</p>'
    caption = f"{c.name}: {', '.join(metrics)} per step ({len(c.log)} logged steps)."
    return out + figure(plots.curves(c.log, metrics, f"train-{index}"), caption, "training")
