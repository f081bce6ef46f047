"""Replies with human proposition labels (gold data), and replies to score.

A row: `conversation` (the turns before the reply, or `prompt`, a single user turn), `response`
(the reply), `response_class` (one of the rules' classes) and, for gold data, `labels` (proposition
id -> true/false). `builtin:rbr_train` and `builtin:rbr_test` are the OpenAI RBR gold data
(see data/SOURCES.md).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from constitutional.errors import UserError
from constitutional.jsonl import iter_jsonl
from constitutional.provenance import derive_seed
from constitutional.rbr.grader import Conversation
from constitutional.rbr.propositions import Propositions

DATA = Path(__file__).resolve().parent.parent / "data"
BUILTIN = {"rbr_train": DATA / "rbr_gold_train.jsonl", "rbr_test": DATA / "rbr_gold_test.jsonl"}


@dataclass
class Reply:
    conversation: Conversation
    response: str
    response_class: str
    labels: dict[str, bool] = field(default_factory=dict)
    row: dict = field(default_factory=dict)


def resolve(spec: str | Path) -> Path:
    name = str(spec).removeprefix("builtin:")
    if str(spec).startswith("builtin:"):
        if name not in BUILTIN:
            raise UserError(f"unknown builtin {name!r} (choose from {', '.join(BUILTIN)})")
        return BUILTIN[name]
    return Path(spec)


def load_replies(
    spec: str | Path,
    props: Propositions,
    *,
    gold: bool,
    default_class: str | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> list[Reply]:
    """Read and check replies; errors name the file and line.

    Args:
        gold: require `labels` for every proposition the rules of the row's class use.
        default_class: class of rows without `response_class` (None: the field is required).
        limit: keep a seeded random sample of `limit` rows (in file order): gold files are
            sorted by kind, so their first rows would not be representative.
    """
    path = resolve(spec)
    out = [_reply(row, props, gold, default_class, path, line) for line, row in iter_jsonl(path)]
    if not out:
        raise UserError("no replies: the file is empty", path)
    if limit is not None and limit < len(out):
        if limit < 1:
            raise UserError(f"--limit must be >= 1, got {limit}")
        keep = sorted(random.Random(derive_seed(seed, "rbr-limit")).sample(range(len(out)), limit))
        out = [out[i] for i in keep]
    return out


def _reply(
    row: dict, props: Propositions, gold: bool, default_class, path: Path, line: int
) -> Reply:
    conversation = row.get("conversation", row.get("prompt"))
    if not _is_conversation(conversation):
        raise UserError(
            "needs `conversation` (a list of {role, content}) or `prompt` (text)", path, line
        )
    response = row.get("response")
    if not isinstance(response, str):
        raise UserError("`response` must be a string", path, line)
    cls = row.get("response_class", default_class)
    if cls not in props.rules:
        raise UserError(
            f"response_class must be one of {', '.join(props.classes)}, got {cls!r}", path, line
        )
    labels = row.get("labels", {})
    if not isinstance(labels, dict) or not all(isinstance(v, bool) for v in labels.values()):
        raise UserError("`labels` must map proposition ids to true/false", path, line)
    if gold:
        needed = {name for rule in props.rules[cls] for name in rule.when}
        missing = sorted(needed - set(labels))
        if missing:
            raise UserError(
                f"labels lack {', '.join(missing)} (used by the {cls} rules)", path, line
            )
    return Reply(conversation, response, cls, labels, row)


def _is_conversation(value) -> bool:
    if isinstance(value, str):
        return bool(value.strip())
    return (
        isinstance(value, list)
        and bool(value)
        and all(
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
            for m in value
        )
    )
