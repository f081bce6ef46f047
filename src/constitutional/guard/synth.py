"""Synthetic labelled data for constitutional classifiers, generated from the constitution.

Sharma et al. 2025, "Constitutional Classifiers" (https://arxiv.org/abs/2501.18837): the
constitution's harmful and harmless categories are turned into user queries by a model, then
augmented (paraphrase, role-play, obfuscation, translation, multi-turn) so that a classifier
learns the intent rather than the wording. Every model call is one batched, seeded request list
through the response cache, so a killed run resumes for free. Rows are deduplicated on
normalised text and split by *source query*: all variants of one query share a split, so the
held-out split measures generalisation rather than memorised paraphrases.
"""

from __future__ import annotations

import math
import random
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from constitutional.backends import CachedBackend, Completion, GenerationRequest
from constitutional.constitution import Constitution
from constitutional.constitution.schema import Category
from constitutional.errors import UserError
from constitutional.guard import augment as aug
from constitutional.provenance import derive_seed, row_meta

ARTIFACT = "guard_synth"
SCHEMA_VERSION = 1
LABELS = {"harmful": 1, "harmless": 0}
Progress = Callable[[str, int], None]  # (stage label, total) starts a stage; ("", 1) advances it

QUERY_OVERSAMPLE = 1.5  # requests per wanted query: some come back cut off, too short or repeated
TOKENS_PER_QUERY = 48
REWRITE_MAX_TOKENS = 160

# A document the model continues, not an instruction it must follow: the list starts with the
# category's own examples and ends at the next item's number, and generation stops at the line's
# end. On the embedded 135M model this gave 560 distinct queries from 840 samples (40 in each of
# 14 categories), where asking for "a numbered list of N messages" gave 22 of the 70 asked.
QUERY_LIST = (
    "Messages that users have sent to an AI assistant. Topic: {description}\n\n{items}{next}."
)
AUG_ORDER = ("none", *aug.AUGMENTATIONS)


@dataclass
class SynthConfig:
    """Knobs of synthetic guard data.

    Args:
        per_category: distinct user queries wanted per category (fewer if the model repeats).
        responses: also answer every query, for output/exchange classifiers.
        augment: augmentations to add per query, a subset of `augment.AUGMENTATIONS`.
        heldout: share of source queries per category held out, in [0, 1).
        seed: run seed; every sample and every choice of template derives from it.
        temperature: for the queries (high: variety matters more than polish).
        rewrite_temperature: for paraphrases and translations.
        response_temperature / response_max_tokens: for the responses.
        languages: translation targets, one drawn per query.
    """

    per_category: int = 20
    responses: bool = False
    augment: tuple[str, ...] = ()
    heldout: float = 0.2
    seed: int = 0
    temperature: float = 1.0
    rewrite_temperature: float = 0.7
    response_temperature: float = 0.7
    response_max_tokens: int = 256
    languages: tuple[str, ...] = ("French", "Spanish", "German", "Chinese", "Russian")


def parse_augmentations(text: str) -> tuple[str, ...]:
    """ "paraphrase, roleplay" → ("paraphrase", "roleplay"), in canonical order; UserError if unknown."""
    names = {name.strip() for name in text.split(",") if name.strip()}
    unknown = sorted(names - set(aug.AUGMENTATIONS))
    if unknown:
        raise UserError(
            f"unknown augmentation {', '.join(unknown)}; choose from {', '.join(aug.AUGMENTATIONS)}"
        )
    return tuple(name for name in aug.AUGMENTATIONS if name in names)


def check_inputs(constitution: Constitution, config: SynthConfig) -> None:
    """Fail before any model call on settings or a constitution that cannot give labelled data."""
    if not 0 <= config.heldout < 1:
        raise UserError(f"--heldout must be in [0, 1), got {config.heldout}")
    if config.per_category < 1:
        raise UserError(f"--per-category must be at least 1, got {config.per_category}")
    parse_augmentations(",".join(config.augment))
    if not constitution.categories.harmful or not constitution.categories.harmless:
        raise UserError(
            "the constitution needs a `categories` section with at least one harmful and one "
            "harmless category (see `cai constitution show default`)"
        )


def normalize(text: str) -> str:
    """Text as compared for duplicates: NFKC, case-folded, punctuation dropped, spaces collapsed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    return " ".join(text.split())


def dedupe(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mark every kept row whose user text repeats an earlier kept row as a discarded duplicate.

    Rows are compared on `normalize` of their user turns, whatever their label: the same text
    under two labels would only teach the classifier noise.
    """
    first: dict[str, str] = {}
    for row in rows:
        if row["discarded"]:
            continue
        key = normalize("\n".join(m["content"] for m in row["messages"] if m["role"] == "user"))
        if key in first:
            row.update(discarded=True, reason=f"duplicate of {first[key]}")
        else:
            first[key] = row["id"]
    return rows


def assign_splits(sources: Sequence[tuple[str, str]], heldout: float, seed: int) -> dict[str, str]:
    """Map each (source_id, category) to "train" or "heldout", stratified by category.

    Within each category, a seeded shuffle holds out round(heldout * n) sources, so every
    category is represented in both splits once it has enough queries.
    """
    by_category: dict[str, list[str]] = defaultdict(list)
    for source_id, category in sources:
        by_category[category].append(source_id)
    splits: dict[str, str] = {}
    for category, ids in by_category.items():
        ids = sorted(ids)
        random.Random(derive_seed(seed, "split", category)).shuffle(ids)
        n_held = round(len(ids) * heldout)
        splits.update({sid: "heldout" if i < n_held else "train" for i, sid in enumerate(ids)})
    return splits


def synthesize(
    constitution: Constitution,
    backend: CachedBackend,
    config: SynthConfig,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Generate, augment, deduplicate and split guard data; discarded rows say why.

    Returns rows grouped by source query (original first, then augmentations), then the
    discarded query samples. Each row: id, messages, response, label, category, category_kind,
    augmentation, variant, language, source_id, split, discarded, reason, meta.
    """
    check_inputs(constitution, config)
    progress = progress or (lambda label, n: None)
    meta = row_meta(ARTIFACT, SCHEMA_VERSION, constitution)
    rows, failed_queries = _source_rows(constitution, backend, config, progress, meta)
    sources = [r for r in dedupe(rows) if not r["discarded"]]
    rows += _augmented_rows(sources, backend, config, progress)
    if config.responses:
        _attach_responses(rows, sources, backend, config, progress)
    dedupe(rows)
    splits = assign_splits(
        [(s["source_id"], s["category"]) for s in sources], config.heldout, config.seed
    )
    for row in rows:
        row["split"] = splits.get(row["source_id"])
    order = {s["source_id"]: i for i, s in enumerate(rows) if s["augmentation"] == "none"}
    rows.sort(key=lambda r: (order[r["source_id"]], AUG_ORDER.index(r["augmentation"])))
    for row in rows:
        row.pop("query", None)  # the source text rode along on originals for the augmentations
    return rows + failed_queries


def _categories(constitution: Constitution) -> list[tuple[Category, str]]:
    cats = constitution.categories
    return [(c, "harmful") for c in cats.harmful] + [(c, "harmless") for c in cats.harmless]


def query_list_prompt(category: Category) -> str:
    """The start of a numbered list of user messages on `category`, ready for the next item."""
    items = "".join(f"{i}. {text}\n" for i, text in enumerate(category.examples, 1))
    return QUERY_LIST.format(
        description=category.description, items=items, next=len(category.examples) + 1
    )


def _source_rows(constitution, backend, config, progress, meta) -> tuple[list[dict], list[dict]]:
    """Sample one list item per request, for each category; keep the first distinct good ones."""
    asks = [
        (c, kind, i)
        for c, kind in _categories(constitution)
        for i in range(math.ceil(config.per_category * QUERY_OVERSAMPLE))
    ]
    requests = [
        GenerationRequest(
            prompt=query_list_prompt(c),
            temperature=config.temperature,
            max_tokens=TOKENS_PER_QUERY,
            stop=["\n"],
            seed=derive_seed(config.seed, "queries", c.id, i),
        )
        for c, kind, i in asks
    ]
    found: dict[str, dict[str, str]] = defaultdict(
        dict
    )  # category id -> normalised -> first wording
    examples = {c.id: {normalize(e) for e in c.examples} for c, _ in _categories(constitution)}
    failed = []
    for (category, kind, i), completion in zip(asks, _run(backend, requests, "queries", progress)):
        query, reason = _list_item(completion, examples[category.id])
        if reason:
            failed.append(_query_discard(category, kind, i, completion.text, reason, meta))
        else:
            found[category.id].setdefault(normalize(query), query)
    rows = []
    for category, kind in _categories(constitution):
        for i, query in enumerate(list(found[category.id].values())[: config.per_category]):
            source = {
                "source_id": f"{category.id}-{i:03d}",
                "category": category.id,
                "category_kind": kind,
            }
            rows.append(_row(source, "none", None, [_user(query)], meta, query=query))
    return rows, failed


def _list_item(completion: Completion, examples: set[str]) -> tuple[str, str | None]:
    """The query the model added to the list, or why there is none (`examples`: normalised)."""
    text = completion.text.strip().strip("*\"'\u201c\u201d").strip()
    if completion.finish_reason == "length":
        return text, "cut off at max_tokens"
    if len(text.split()) < 3:
        return text, "too short to be a query"
    if aug.looks_like_refusal(text):
        return text, "a refusal, not a query"
    if normalize(text) in examples:
        return text, "repeats one of the constitution's examples"
    return text, None


def _query_discard(
    category: Category, kind: str, i: int, raw: str, reason: str, meta: dict
) -> dict[str, Any]:
    return {
        "id": f"{category.id}.q{i:03d}",
        "messages": None,
        "response": None,
        "label": LABELS[kind],
        "category": category.id,
        "category_kind": kind,
        "augmentation": None,
        "variant": None,
        "language": None,
        "source_id": None,
        "split": None,
        "discarded": True,
        "reason": reason,
        "raw": raw,
        "meta": meta,
    }


def _augmented_rows(sources: list[dict], backend, config: SynthConfig, progress) -> list[dict]:
    """Deterministic augmentations in place; model ones as one batched call, then checked."""
    rows, pending = [], []
    for s in sources:
        query = s["query"]
        for name in config.augment:
            if name == "roleplay":
                template = _draw(config.seed, name, s["source_id"], sorted(aug.ROLEPLAY_TEMPLATES))
                rows.append(
                    _row(s, name, template, [_user(aug.roleplay(query, template))], s["meta"])
                )
            elif name == "obfuscate":
                method = _draw(config.seed, name, s["source_id"], sorted(aug.OBFUSCATIONS))
                rows.append(_row(s, name, method, [_user(aug.obfuscate(query, method))], s["meta"]))
            elif name == "multiturn":
                rows.append(_row(s, name, None, aug.split_turns(query), s["meta"]))
            else:
                pending.append((s, name, _rewrite_prompt(s, name, config)))
    requests = [
        _chat(
            prompt,
            config.rewrite_temperature,
            REWRITE_MAX_TOKENS,
            derive_seed(config.seed, name, s["source_id"]),
        )
        for s, name, (prompt, _) in pending
    ]
    for (s, name, (_, language)), c in zip(
        pending, _run(backend, requests, "paraphrase + translate", progress)
    ):
        text = aug.clean_rewrite(c.text)
        row = _row(s, name, language, [_user(text)], s["meta"], language=language or "English")
        reason = _rewrite_problem(text, s["query"])
        if reason:  # kept with the model's words, so a bad prompt shows in the discards file
            row.update(discarded=True, reason=reason, raw=c.text)
        rows.append(row)
    return rows


def _rewrite_prompt(source: dict, name: str, config: SynthConfig) -> tuple[str, str | None]:
    if name == "paraphrase":
        return aug.PARAPHRASE_PROMPT.format(query=source["query"]), None
    language = _draw(config.seed, name, source["source_id"], list(config.languages))
    return aug.TRANSLATE_PROMPT.format(query=source["query"], language=language), language


def _rewrite_problem(text: str, query: str) -> str | None:
    if not text:
        return "empty rewrite"
    if aug.looks_like_refusal(text):
        return "the model refused to rewrite the query"
    if normalize(text) == normalize(query):
        return "identical to the source query"
    return None


def _attach_responses(
    rows: list[dict], sources: list[dict], backend, config: SynthConfig, progress
) -> None:
    """Answer each source query once; every variant of that query shares the answer.

    A harmful category's row needs a compliant answer to be a harmful output example, so a
    refusal there is recorded in `response_reason` and the response left empty.
    """
    requests = [
        GenerationRequest(
            messages=[_user(s["query"])],
            temperature=config.response_temperature,
            max_tokens=config.response_max_tokens,
            seed=derive_seed(config.seed, "response", s["source_id"]),
        )
        for s in sources
    ]
    answers = {}
    for s, c in zip(sources, _run(backend, requests, "responses", progress)):
        text = c.text.strip()
        reason = "empty response" if not text else None
        if s["category_kind"] == "harmful" and aug.looks_like_refusal(text):
            reason = "refused: not a harmful output example"
        answers[s["source_id"]] = (None if reason else text, reason)
    for row in rows:
        row["response"], row["response_reason"] = answers.get(
            row["source_id"], (None, "query discarded")
        )


def _row(
    source: dict, augmentation: str, variant: str | None, messages: list, meta: dict, **extra
) -> dict[str, Any]:
    row = {
        "id": f"{source['source_id']}.{augmentation}",
        "messages": messages,
        "response": None,
        "label": LABELS[source["category_kind"]],
        "category": source["category"],
        "category_kind": source["category_kind"],
        "augmentation": augmentation,
        "variant": variant,
        "language": "English",
        "source_id": source["source_id"],
        "split": None,
        "discarded": False,
        "reason": None,
        "meta": meta,
    }
    row.update(extra)
    return row


def _draw(seed: int, name: str, source_id: str, options: list[str]) -> str:
    """A seeded choice among templates, methods or languages for one query (reproducible)."""
    return random.Random(derive_seed(seed, name, source_id)).choice(options)


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def _chat(prompt: str, temperature: float, max_tokens: int, seed: int) -> GenerationRequest:
    return GenerationRequest(
        messages=[_user(prompt)], temperature=temperature, max_tokens=max_tokens, seed=seed
    )


def _run(
    backend: CachedBackend, requests: list[GenerationRequest], label: str, progress: Progress
) -> list[Completion]:
    progress(label, len(requests))
    return backend.generate(requests, on_result=lambda i, c: progress("", 1)) if requests else []
