"""`cai collective to-constitution`: planted consensus → principles with provenance, template or model."""

from __future__ import annotations

import csv
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import cai

from constitutional.backends import Completion
from constitutional.collective.drafting import DraftError, model_drafts, parse_draft, template_draft
from constitutional.collective.to_constitution import (
    Analysis,
    build_constitution,
    load_analysis,
    principle_ids,
    select,
)
from constitutional.constitution import Provenance, load_constitution

pytest.importorskip("sklearn")

CONSENSUS = {f"s{i}" for i in range(15, 20)}  # both planted groups agree with these


def to_constitution(*args) -> subprocess.CompletedProcess:
    return cai("collective", "to-constitution", *args)


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, Path]:
    """Two groups of 20: A agrees s0-s9 and rejects s10-s14, B the reverse; both agree s15-s19."""
    root = tmp_path_factory.mktemp("votes")
    rng = np.random.default_rng(0)
    stance = {"A": [1] * 10 + [-1] * 5 + [1] * 5, "B": [-1] * 10 + [1] * 5 + [1] * 5}
    with (root / "votes.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["participant", "statement", "vote"])
        for name, votes in stance.items():
            for i in range(20):
                w.writerows(
                    (f"{name}{i}", f"s{s}", v) for s, v in enumerate(votes) if rng.random() > 0.25
                )
    with (root / "comments.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["statement", "text"])
        w.writerows((f"s{s}", f"The assistant should honour value {s}.") for s in range(20))
    return root / "votes.csv", root / "comments.csv"


def provenance_ids(constitution) -> list[str]:
    return [s.id for p in constitution.critique_revision for s in p.provenance.statements]


def test_template_path_gives_a_valid_constitution_from_the_planted_consensus(planted, tmp_path):
    votes, comments = planted
    out = tmp_path / "collective.yaml"
    result = to_constitution(votes, comments, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "5 principles (template)" in result.stderr

    check = cai("constitution", "validate", out)
    assert (
        check.returncode == 0
        and "5 critique/revision pairs, 5 comparison principles" in check.stdout
    )
    c = load_constitution(out)
    assert set(provenance_ids(c)) == CONSENSUS and len(provenance_ids(c)) == 5
    assert [p.id for p in c.critique_revision] == [p.id for p in c.comparison]
    for pair, question in zip(c.critique_revision, c.comparison, strict=True):
        origin = pair.provenance
        assert (
            origin == question.provenance
            and origin.drafted_by == "template"
            and origin.model is None
        )
        (statement,) = origin.statements
        assert pair.id == f"collective-{statement.id}"
        assert statement.text in pair.critique and statement.text in question.text
        assert len(statement.groups) == 2 and all(g.p_agree > 0.8 for g in statement.groups)
        assert statement.consensus == pytest.approx(np.prod([g.p_agree for g in statement.groups]))
    consensus = [p.provenance.statements[0].consensus for p in c.critique_revision]
    assert consensus == sorted(consensus, reverse=True)

    diff = cai("constitution", "diff", "default", out, "--json")
    assert diff.returncode == 0, diff.stderr
    sections = json.loads(diff.stdout)["sections"]
    assert {p["id"] for p in sections["critique_revision"]["added"]} == {
        f"collective-{s}" for s in CONSENSUS
    }
    assert len(sections["comparison"]["removed"]) == len(load_constitution().comparison)

    again = tmp_path / "again.yaml"  # seeded and deterministic: the same bytes twice
    assert to_constitution(votes, comments, "--out", again).returncode == 0
    assert again.read_bytes() == out.read_bytes()
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    assert manifest["stages"]["collective_to_constitution"]["constitution"]["hash"] == c.hash


def test_analysis_json_input_threshold_and_limit(planted, tmp_path):
    votes, comments = planted
    analysis = tmp_path / "analysis.json"
    assert cai("collective", "analyze", votes, comments, "--out", analysis).returncode == 0
    loaded = load_analysis(analysis)
    chosen = select(loaded)
    assert {r.statement for r in chosen} == CONSENSUS
    assert select(loaded, threshold=0.01) != chosen and len(select(loaded, 0.01, limit=7)) == 7

    out = tmp_path / "c.yaml"
    result = to_constitution(
        analysis, "--out", out, "--limit", 2, "--name", "town-hall", "--version", "0.2"
    )
    assert result.returncode == 0, result.stderr
    c = load_constitution(out)
    assert (c.name, c.version, len(c.comparison)) == ("town-hall", "0.2", 2)
    assert set(provenance_ids(c)) <= CONSENSUS
    assert c.critique_revision[0].provenance.source == "collective:analysis.json"


def test_provenance_is_optional_and_leaves_existing_hashes_alone(tmp_path):
    default = load_constitution()
    dumped = default.model_dump(mode="json")
    assert all("provenance" not in p for p in dumped["critique_revision"] + dumped["comparison"])

    origin = Provenance(
        source="collective:x",
        drafted_by="template",
        statements=[
            {
                "id": "7",
                "text": "Be kind.",
                "consensus": 0.6,
                "groups": [{"group": 0, "p_agree": 0.6, "votes": 3, "agree": 2, "disagree": 1}],
            }
        ],
    )
    first = default.comparison[0].model_copy(update={"provenance": origin})
    changed = default.model_copy(update={"comparison": [first, *default.comparison[1:]]})
    assert changed.hash != default.hash  # provenance, once present, is part of the content
    path = tmp_path / "with.yaml"
    path.write_text(changed.to_yaml())
    assert load_constitution(path).hash == changed.hash
    assert load_constitution(path).comparison[0].provenance == origin


NEEDS = "The AI should pay attention to what users actually need."


def test_parse_draft_reads_the_three_lines_and_rejects_what_it_cannot_use():
    reply = (
        "Sure!\n**Critique:** Point out where the reply ignores the user's stated needs.\n"
        "Revision: Rewrite the reply so that it answers what the user actually asked.\n"
        "- Comparison: Which response pays closer attention to what the user asked for?\n"
    )
    draft = parse_draft(reply, NEEDS)
    assert draft.critique == "Point out where the reply ignores the user's stated needs."
    assert draft.comparison == "Which response pays closer attention to what the user asked for?"
    critique = "Point out where the reply ignores the user's stated needs."
    for broken, reason in [
        (reply.replace("Revision", "Rewrite"), "no Revision: line"),
        (reply.replace("asked for?", "asked for."), "comparison is not a question"),
        (reply.replace(critique, "<ask>"), "critique is 5 characters"),
        ("Critique: <ask where the assistant's last reply falls short>\n" + reply, "placeholder"),
        (
            reply.replace(critique, "Say where the reply does not meet the statement."),
            "refers to 'the statement'",
        ),
        (
            reply.replace(critique, "The AI should pay attention to what users actually need."),
            "does not speak of",
        ),
        (
            reply.replace(
                critique, "In this reply, the AI should pay attention to what users actually need."
            ),
            "critique restates the statement",
        ),
        (
            reply.replace(
                "Which response pays closer attention to what the user asked for?",
                "Which of these responses is more honest about the limits of what the assistant knows?",
            ),
            "comparison copies the worked example",
        ),
        (
            reply.replace(
                "Which response pays closer attention to what the user asked for?",
                "Which of these responses is more polite?",
            ),
            "comparison shares no content word",
        ),
    ]:
        with pytest.raises(DraftError, match=re.escape(reason)):
            parse_draft(broken, NEEDS)


class Scripted:
    """Drafts well for statements that mention 'kind', badly for the rest."""

    name, model = "fake", "scripted"

    def fingerprint(self) -> str:
        return "scripted"

    def generate(self, requests, on_result=None):
        good = (
            "Critique: Say where the reply was unkind to anyone.\nRevision: Rewrite the reply so "
            "that it is kind throughout.\nComparison: Which of these responses is kinder?"
        )
        return [
            Completion(
                good if "kind" in r.messages[-1]["content"] else "I like turtles.", "stop", 9, 9
            )
            for r in requests
        ]


def test_model_drafts_fall_back_per_statement_and_provenance_says_which():
    drafts = model_drafts([("1", "Be kind."), ("2", "Be brief.")], Scripted(), seed=0)
    (kind, kind_reason), (brief, brief_reason) = drafts
    assert kind_reason is None and kind.comparison == "Which of these responses is kinder?"
    assert brief_reason == "no Critique: line" and brief == template_draft("Be brief.")

    group = {"group": 0, "p_agree": 0.75, "votes": 2, "agree": 2, "disagree": 0}
    analysis = Analysis.model_validate(
        {
            "participants": {"total": 9, "kept": 8},
            "k": 1,
            "config": {"consensus_threshold": 0.5},
            "statement_stats": [
                {"statement": sid, "text": text, "consensus": 0.75, "groups": [group]}
                for sid, text in (("1", "Be kind."), ("2", "Be brief."))
            ],
        }
    )
    c = build_constitution(
        analysis, select(analysis), drafts, source="collective:x", model="fake:scripted"
    )
    origins = [p.provenance for p in c.comparison]
    assert [(o.drafted_by, o.model, o.fallback) for o in origins] == [
        ("model", "fake:scripted", None),
        ("template", "fake:scripted", "no Critique: line"),
    ]
    assert (
        c.comparison[0].text == kind.comparison
        and c.critique_revision[1].critique == brief.critique
    )
    assert c.metadata["collective"]["drafted"] == {"model": 1, "template": 1}


def test_model_path_on_a_tiny_random_model(planted, tiny_model_dir, tmp_path):
    votes, comments = planted
    out = tmp_path / "drafted.yaml"
    result = to_constitution(
        votes,
        comments,
        "--out",
        out,
        "--draft",
        "model",
        "--model",
        tiny_model_dir,
        "--no-cache",
        "--max-tokens",
        24,
        "--limit",
        3,
    )
    assert result.returncode == 0, result.stderr
    assert cai("constitution", "validate", out).returncode == 0
    c = load_constitution(out)
    origins = [p.provenance for p in c.critique_revision]
    # Random weights write gibberish: every draft falls back, and each says why.
    assert all(
        o.drafted_by == "template" and o.fallback and o.model.startswith("local:") for o in origins
    )
    assert c.metadata["collective"]["drafted"] == {"model": 0, "template": 3}
    assert "0 drafted by the model, 3 by the template" in result.stderr
    stage = json.loads(Path(f"{out}.manifest.json").read_text())["stages"][
        "collective_to_constitution"
    ]
    assert stage["tokens"]["calls"] == 3


def test_principle_ids_are_unique_slugs():
    assert principle_ids(["S 1", "s-1", "Über/2", "x" * 80]) == [
        "collective-s-1",
        "collective-s-1-2",
        "collective-ber-2",
        "collective-" + "x" * 45,
    ]


def test_bad_input_exits_2_naming_file_and_line(planted, tmp_path):
    votes, _ = planted
    out = tmp_path / "never.yaml"
    broken = tmp_path / "broken.json"
    broken.write_text('{\n  "k": 2,\n  "config": {oops}\n}\n')
    missing_key = tmp_path / "short.json"
    missing_key.write_text(
        '{"participants": {"total": 3, "kept": 3}, "k": 2,\n'
        ' "config": {"consensus_threshold": 0.5},\n'
        ' "statement_stats": [\n'
        '  {"statement": "a", "text": "A.", "consensus": 0.7}\n'
        "]}\n"
    )
    untitled = tmp_path / "untitled.json"
    assert cai("collective", "analyze", votes, "--out", untitled).returncode == 0
    bad_votes = tmp_path / "votes.csv"
    bad_votes.write_text("participant,statement,vote\np1,s1,1\np1,s2,yes\n")
    for args, expected in [
        ((broken,), f"{broken}:3: invalid JSON"),
        ((missing_key,), f"{missing_key}:4: missing required key 'groups'"),
        ((untitled,), f"{untitled}:"),
        ((votes,), f"{votes}: consensus statement"),
        ((bad_votes,), f"{bad_votes}:3: vote must be"),
        ((untitled, "--consensus-threshold", 1.5), "--consensus-threshold must be in (0, 1)"),
        ((votes, "--draft", "llm"), "--draft must be one of"),
    ]:
        result = to_constitution(*args, "--out", out)
        assert result.returncode == 2, (args, result.stderr)
        assert (
            result.stderr.startswith("cai: error: " + expected) and result.stderr.count("\n") == 1
        ), result.stderr
    assert not out.exists() and not list(tmp_path.glob(".never*"))
