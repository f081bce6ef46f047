"""Writing a training checkpoint: staged and renamed into place, with one provenance record.

Every recipe (sft, dpo, grpo, ppo, preference_model) trains or saves inside
`staged_checkpoint(out, overwrite)`, so a killed run leaves no half checkpoint, and ends with
`write_checkpoint_record`, so every `cai_checkpoint.json` has the same frame: schema, the recipe's
own fields, data, hyperparameters, seed, device, the summary, package versions.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from constitutional.atomic_dir import staged_dir
from constitutional.backends.embedded import EMBEDDED_NAME
from constitutional.jsonl import write_json
from constitutional.provenance import package_versions, sha256_file
from constitutional.train.common import TRAINER_SCRATCH

CHECKPOINT_SCHEMA = "cai.checkpoint/1"


@contextmanager
def staged_checkpoint(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a staging directory for the checkpoint `out`: refused up front if `out` is in the way
    (UserError), deleted if the block raises, renamed onto `out` (replacing it) when it ends. The
    Trainer's scratch dir is dropped first. Removing the directory in the block publishes nothing."""
    with staged_dir(out, overwrite) as tmp:
        yield tmp
        shutil.rmtree(tmp / TRAINER_SCRATCH, ignore_errors=True)


def write_checkpoint_record(
    directory: Path,
    fields: dict[str, Any],
    *,
    hyperparameters: dict[str, Any],
    seed: int,
    device: str,
    summary: dict[str, Any],
    data: dict[str, Any] | None = None,
) -> None:
    """`cai_checkpoint.json`: the schema, the recipe's `fields` (stage, kind, base, ...), the
    training data (`data_record`; omitted when there is none), then the common tail."""
    record = {"schema": CHECKPOINT_SCHEMA, **fields}
    if data is not None:
        record["data"] = data
    record.update(hyperparameters=hyperparameters, seed=seed, device=device)
    write_json(
        directory / "cai_checkpoint.json", {**record, **summary, "packages": package_versions()}
    )


def rl_fields(
    kind: str,
    policy: str,
    saved_adapter: bool,
    reward: dict[str, Any],
    beta: float,
    prompts: str | Path,
) -> dict[str, Any]:
    """The record fields of an online RL run (ppo, grpo): the policy is its own KL reference."""
    ref = base_reference(policy)
    return {
        "stage": f"rl-cai-{kind}",
        "kind": kind,
        "policy": ref,
        "reference": ref,
        "base": ref if saved_adapter else None,
        "reward_model": reward.get("reward_model"),
        "reward": reward,
        "beta": beta,
        "prompts": str(prompts),
    }


def data_record(path: Path, **counts: int) -> dict[str, Any]:
    """How a checkpoint names its training file: absolute path, SHA-256, and row counts."""
    return {"path": str(path.resolve()), "sha256": sha256_file(path), **counts}


def save_model_dir(model, tokenizer, directory: Path, base: str, adapter: bool) -> None:
    """Save weights (or a LoRA adapter) and tokenizer so that LocalBackend can load the directory.

    PEFT records the resolved cache path of the base; an adapter must name the spec instead
    ("embedded", or an absolute path), which is what `resolve_model` reads back.
    """
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    if adapter:
        config_path = directory / "adapter_config.json"
        adapter_config = json.loads(config_path.read_text())
        adapter_config["base_model_name_or_path"] = base_reference(base)
        write_json(config_path, adapter_config)


def save_policy(
    model, tokenizer, directory: Path, policy: str, *, lora: bool, policy_is_adapter: bool
) -> bool:
    """Save a tuned policy: a fresh adapter over the policy spec, or the full (merged) model when
    the policy was itself an adapter (LocalBackend loads one adapter level only) or without LoRA.
    Returns whether an adapter was saved."""
    adapter = lora and not policy_is_adapter
    if lora and not adapter:
        model = model.merge_and_unload()
    save_model_dir(model, tokenizer, directory, policy, adapter=adapter)
    return adapter


def base_reference(base: str) -> str:
    """The base as the adapter should name it: the spec, with a relative path made absolute so
    the checkpoint loads from any working directory."""
    if base == EMBEDDED_NAME or not Path(base).expanduser().exists():
        return base
    return str(Path(base).expanduser().resolve())


def write_train_log(directory: Path, log: list[dict[str, Any]], **curves: str) -> None:
    """`train_log.json` and one SVG per curve: `curves` maps a file stem to the logged key
    plotted against `step` (entries where it is None are left out)."""
    write_json(directory / "train_log.json", log)
    for stem, key in curves.items():
        points = [(e["step"], e[key]) for e in log if e.get(key) is not None]
        write_loss_svg(directory / f"{stem}.svg", points)


def write_loss_svg(path: Path, points: list[tuple[int, float]], w: int = 480, h: int = 240) -> None:
    """The loss curve as one SVG polyline, so plotting needs no matplotlib."""
    if not points:
        return
    pad, (x0, x1) = 30, (points[0][0], points[-1][0])
    lo, hi = min(y for _, y in points), max(y for _, y in points)
    sx, sy = (w - 2 * pad) / ((x1 - x0) or 1), (h - 2 * pad) / ((hi - lo) or 1)
    xy = " ".join(f"{pad + (x - x0) * sx:.1f},{h - pad - (y - lo) * sy:.1f}" for x, y in points)
    path.write_text(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-size="11">\n'
        f'<rect width="{w}" height="{h}" fill="white" stroke="#ccc"/>\n'
        f'<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{xy}"/>\n'
        f'<text x="4" y="{pad - 8}">loss {hi:.3f}</text><text x="4" y="{h - 8}">{lo:.3f}</text>\n'
        f'<text x="{w - 4}" y="{h - 8}" text-anchor="end">step {x1}</text>\n</svg>\n',
        encoding="utf-8",
    )
