"""Guard training rows, and the three text views the classifiers read.

A row (written by `cai guard synth`) is {id, messages, response, label, category, kind,
augmentation, source_id, split}: `label` 1 = harmful, 0 = harmless; `split` "train" or "heldout".
Each classifier sees one view of it:

    input:    the conversation so far              (rows without a response, see `view_rows`)
    output:   a prefix of the response alone        (rows with a response)
    exchange: the conversation + a response prefix  (rows with a response)

The output and exchange views are trained on prefixes of each response cut at several points
(`PREFIX_CUTS`), so that they can score a stream as it grows; held-out rows are scored the same
way, a response counting as flagged when any of its prefixes is (`per_row_max`).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from constitutional.errors import UserError
from constitutional.jsonl import iter_jsonl

VIEWS = ("input", "output", "exchange")
SPLITS = ("train", "heldout")
ROLES = {"system", "user", "assistant"}
PREFIX_CUTS = (0.25, 0.5, 0.75, 1.0)  # shares of the response's words kept when training
HOLDBACK_CHARS = 64  # the proxy's default hold-back (`cai guard serve --holdback`)


@dataclass(frozen=True)
class GuardRow:
    messages: list[dict[str, str]]
    response: str | None
    label: int
    split: str
    category: str | None = None
    group: str | None = None  # rows of one source query (`source_id`) share it

    @property
    def key(self) -> str:
        """Identifies the row's content (conversation and response), e.g. in guard.json's list
        of the rows its threshold was calibrated on."""
        blob = json.dumps([self.messages, self.response], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()[:16]


# `builtin:real_prompts`: real prompts written by people, none seen in training, to check that
# classifiers trained on synthetic data carry over (input view only: there are no responses).
REAL_PROMPTS = {
    "harmbench": 1,
    "strongreject": 1,
    "self_instruct": 0,
    "mt_bench": 0,
    "over_refusal": 0,
}


def load_guard_rows(path: str | Path) -> list[GuardRow]:
    """Read and check guard rows; a bad field raises `UserError` naming FILE:LINE.

    `builtin:real_prompts` gives the bundled red-team sets (harmful) and the helpful and
    alarming-but-benign sets (harmless), all held out.
    """
    if str(path) == "builtin:real_prompts":
        return real_prompt_rows()
    path = Path(path)
    rows = []
    for line, raw in iter_jsonl(path):
        rows.append(_parse_row(raw, path, line))
    if not rows:
        raise UserError("no guard rows: the file is empty", path)
    return rows


def real_prompt_rows() -> list[GuardRow]:
    from constitutional.generate import load_prompts

    return [
        GuardRow([{"role": "user", "content": row["prompt"]}], None, label, "heldout", name)
        for name, label in REAL_PROMPTS.items()
        for row in load_prompts(f"builtin:{name}")
    ]


def _parse_row(raw: dict[str, Any], path: Path, line: int) -> GuardRow:
    label = raw.get("label")
    if isinstance(label, bool) or label not in (0, 1):
        raise UserError(f"`label` must be 1 (harmful) or 0 (harmless), got {label!r}", path, line)
    messages = raw.get("messages")
    ok = (
        isinstance(messages, list)
        and messages
        and all(
            isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)
            for m in messages
        )
    )
    if not ok:
        raise UserError("`messages` must be a non-empty list of {role, content}", path, line)
    response = raw.get("response")
    if response is not None and not isinstance(response, str):
        raise UserError(
            f"`response` must be a string or null, got {type(response).__name__}", path, line
        )
    split = raw.get("split")
    if split not in SPLITS:
        raise UserError(f"`split` must be 'train' or 'heldout', got {split!r}", path, line)
    turns = [{"role": m["role"], "content": m["content"]} for m in messages]
    category = raw.get("category") if isinstance(raw.get("category"), str) else None
    group = next((str(raw[k]) for k in ("source_id", "id") if raw.get(k) is not None), None)
    return GuardRow(turns, response or None, int(label), split, category, group)


def conversation_text(messages: list[dict[str, str]]) -> str:
    """The conversation as plain text, one `role: content` turn per line."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def view_text(view: str, messages: list[dict[str, str]], response: str | None) -> str:
    """The text one classifier reads."""
    if view == "input":
        return conversation_text(messages)
    if view == "output":
        return response or ""
    if view == "exchange":
        return f"{conversation_text(messages)}\nassistant: {response or ''}"
    raise ValueError(f"unknown view {view!r}; expected one of {VIEWS}")


def prefixes(text: str, cuts: tuple[float, ...] = PREFIX_CUTS) -> list[str]:
    """Word-boundary prefixes of `text` at the given shares of its words, without repeats."""
    words = text.split(" ")
    out: list[str] = []
    for cut in cuts:
        prefix = " ".join(words[: max(1, round(len(words) * cut))])
        if prefix not in out:
            out.append(prefix)
    return out


def release_point(length: int, released: int, holdback: int) -> int | None:
    """The stream's cadence: with `length` characters arrived and `released` shown, how far the
    proxy may release after a passing check, or None when no check is due (nothing new would
    pass). Shared by the proxy and `stream_checkpoints`, so evaluation checks what serving does.
    """
    safe = length - holdback
    return safe if safe > released else None


def stream_pieces(text: str) -> list[str]:
    """A response cut as an OpenAI stream delivers it: about one token per chunk, here one word
    with its leading whitespace (our server streams per token; words are a close stand-in)."""
    return re.findall(r"\s*\S+", text) or [text]


def stream_checkpoints(response: str, holdback: int = HOLDBACK_CHARS) -> list[str]:
    """Every response prefix the proxy would check when `response` streams in `stream_pieces`
    chunks, in order and without repeats: a check per chunk that lets something new out, then
    the whole answer (the proxy's `_guarded`)."""
    text, released, checked = "", 0, []
    for piece in stream_pieces(response):
        text += piece
        safe = release_point(len(text), released, holdback)
        if safe is not None:
            checked.append(text)
            released = safe
    if not checked or checked[-1] != response:
        checked.append(response)
    return checked


def view_rows(
    view: str, rows: list[GuardRow], split: str | None, *, stream: bool = False
) -> tuple[list[str], list[int], list[int]]:
    """(texts, labels, groups) of one view; groups[i] is the row text i came from.

    split: keep the rows of this split ("train", "heldout"), or None for all of `rows`.
    input: each distinct conversation once, with its label (a row whose response is missing,
    e.g. one the model refused to write, is still a request). output / exchange: rows with a
    response, each expanded to its prefixes (every prefix carries the row's label): at
    `PREFIX_CUTS` for training, or with `stream` at the proxy's own cadence
    (`stream_checkpoints`), to calibrate and measure what serving will do.
    """
    picked = [r for r in rows if split is None or r.split == split]
    texts: list[str] = []
    labels: list[int] = []
    groups: list[int] = []
    if view == "input":
        requests: dict[str, int] = {}
        for r in picked:
            requests.setdefault(view_text(view, r.messages, None), r.label)
        return list(requests), list(requests.values()), list(range(len(requests)))
    cut = stream_checkpoints if stream else prefixes
    for i, r in enumerate(r for r in picked if r.response is not None):
        for prefix in cut(r.response or ""):
            texts.append(view_text(view, r.messages, prefix))
            labels.append(r.label)
            groups.append(i)
    return texts, labels, groups


def heldout_parts(rows: list[GuardRow]) -> tuple[list[GuardRow], list[GuardRow]]:
    """The held-out rows cut in two: (calibration, report). Thresholds and bands are fitted on
    the first, metrics measured on the second (`check_disjoint` enforces it).

    Whole groups (a source query and its augmentations; else one conversation) go to one side,
    alternating in the order of their hashes within each label, so the cut is deterministic
    and both sides get harmful and harmless rows. A report row whose conversation or response
    also occurs on the calibration side is moved there.
    """
    held = [r for r in rows if r.split == "heldout"]
    groups: dict[tuple[int, str], list[GuardRow]] = {}
    for r in held:
        name = r.group or conversation_text(r.messages)
        groups.setdefault((r.label, name), []).append(r)
    order = sorted(
        groups, key=lambda g: (g[0], hashlib.sha256(g[1].encode("utf-8", "surrogatepass")).digest())
    )
    calibration: list[GuardRow] = []
    report: list[GuardRow] = []
    for i, g in enumerate(order):
        (calibration if i % 2 == 0 else report).extend(groups[g])
    seen = {t for r in calibration for t in _row_texts(r)}
    overlap = [r for r in report if seen & set(_row_texts(r))]
    moved = {id(r) for r in overlap}
    return calibration + overlap, [r for r in report if id(r) not in moved]


def _row_texts(row: GuardRow) -> list[str]:
    texts = [conversation_text(row.messages)]
    return texts + ([f"response: {row.response}"] if row.response is not None else [])


def check_disjoint(calibration: list[GuardRow], report: list[GuardRow]) -> None:
    """Refuse to report on any row (or conversation, or response) that calibrated: rates
    measured on the rows a threshold was fitted to are biased toward the target."""
    seen = {t for r in calibration for t in _row_texts(r)}
    shared = sum(bool(seen & set(_row_texts(r))) for r in report)
    if shared:
        raise ValueError(
            f"{shared} report rows share a conversation or response with the "
            "calibration rows; calibrate on one part and report on another"
        )


def per_row_max(values: list[float], groups: list[int]) -> tuple[list[float], list[int]]:
    """The largest value of each group, and the index of the text that has it.

    A stream is refused as soon as one prefix is flagged, so a response's score is the maximum
    over its prefixes: that is what false refusals and recall are measured and calibrated on.
    """
    best: dict[int, int] = {}
    for i, g in enumerate(groups):
        if g not in best or values[i] > values[best[g]]:
            best[g] = i
    order = sorted(best)
    return [values[best[g]] for g in order], [best[g] for g in order]
