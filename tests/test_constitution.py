"""Constitutions: the packaged default, hashing, FILE:LINE errors, diffs and `cai constitution`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from constitutional.cli.constitution import app
from constitutional.constitution import (
    Constitution,
    constitution_hash,
    default_constitution_path,
    diff_constitutions,
    format_diff,
    load_constitution,
    save_constitution,
)
from constitutional.errors import UserError

# Line numbers below refer to this file; keep it in sync with ERROR_CASES.
TINY = """\
name: tiny
version: "0.1"
description: A tiny constitution for tests.
critique_revision:
  - id: harm
    critique: Say how the reply could hurt someone.
    revision: Rewrite the reply so it hurts nobody.
  - id: honesty
    critique: Say what in the reply is false.
    revision: Rewrite the reply so it is true.
comparison:
  - id: harm
    text: Which of these responses is less harmful?
fewshot:
  comparison:
    - prompt: Hi
      response_a: Hello!
      response_b: Go away.
      principle: harm
      reasoning: A is kind; B is rude.
      answer: A
categories:
  harmful:
    - id: violence
      description: Hurting people.
"""


def _edit(line: int, replacement: str | None) -> str:
    """TINY with 1-based `line` replaced (None deletes it; line 26 appends)."""
    lines = TINY.splitlines() + [""]
    if replacement is None:
        del lines[line - 1]
    else:
        lines[line - 1] = replacement
    return "\n".join(lines) + "\n"


def _write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _error(path: Path) -> str:
    with pytest.raises(UserError) as info:
        load_constitution(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_default_has_16_pairs_and_16_comparisons_with_unique_ids():
    c = load_constitution()
    assert c.name and c.version and c.description
    assert len(c.critique_revision) == 16 and len(c.comparison) == 16
    for section in (c.critique_revision, c.comparison):
        ids = [p.id for p in section]
        assert len(set(ids)) == len(ids)
    assert {"non-evasive", "not-preachy", "privacy", "child-safety"} <= {p.id for p in c.comparison}
    assert all(p.text.startswith("Which of these responses") for p in c.comparison)
    assert len(c.fewshot.critique_revision) >= 2 and len(c.fewshot.comparison) >= 2
    assert {e.answer for e in c.fewshot.comparison} == {"A", "B"}
    assert len(c.categories.harmful) >= 8 and len(c.categories.harmless) >= 6
    assert c.metadata["license"] == "Apache-2.0"
    assert "constitutional developers" in c.metadata["authors"]


def test_default_is_reachable_three_ways():
    by_none = load_constitution(None)
    assert load_constitution("default") == by_none
    assert load_constitution(default_constitution_path()) == by_none


def test_lookups_by_id():
    c = load_constitution()
    assert c.pair("privacy").critique.startswith("Does the assistant's last reply expose")
    assert "stonewalling" in c.comparison_principle("non-evasive").text
    with pytest.raises(KeyError, match="no-such"):
        c.pair("no-such")


def test_hash_ignores_formatting_comments_key_order_and_quoting(tmp_path):
    original = load_constitution()
    data = yaml.safe_load(default_constitution_path().read_text(encoding="utf-8"))
    data["critique_revision"][0]["critique"] = "\n  " + data["critique_revision"][0]["critique"]
    flow = yaml.safe_dump(data, sort_keys=True, default_flow_style=True, default_style='"')
    path = _write(tmp_path, "# reformatted copy\n" + flow + "\n# the end\n")
    assert path.read_text() != default_constitution_path().read_text()
    reloaded = load_constitution(path)
    assert reloaded.hash == original.hash == constitution_hash(original)
    assert len(original.hash) == 64 and int(original.hash, 16) >= 0
    assert original.short_hash == original.hash[:12]


def test_hash_changes_when_one_principle_text_changes(tmp_path):
    data = yaml.safe_load(default_constitution_path().read_text(encoding="utf-8"))
    data["comparison"][5]["text"] += " Explain briefly."
    changed = load_constitution(_write(tmp_path, yaml.safe_dump(data)))
    assert changed.hash != load_constitution().hash


def test_to_yaml_round_trips(tmp_path):
    c = load_constitution()
    path = tmp_path / "out" / "copy.yaml"
    save_constitution(c, path)
    assert load_constitution(path) == c
    assert not list(path.parent.glob(".*.tmp"))


# (line to edit, replacement or None to delete, expected error line, message fragment)
ERROR_CASES = {
    "yaml-syntax": (3, "description: a: b", 3, "invalid YAML: mapping values are not allowed"),
    "tab-indent": (5, "\t- id: x", 5, "invalid YAML"),
    "unclosed-quote": (6, '    critique: "unclosed', 6, "quoted scalar"),
    "duplicate-key": (7, "    revision: x\n    critique: again", 8, "duplicate key 'critique'"),
    "duplicate-top-key": (26, "name: other", 26, "duplicate key 'name'"),
    "unknown-top-key": (26, "extra: 1", 26, "unknown key 'extra' in top level"),
    "unknown-nested-key": (
        13,
        "    text: Q?\n    weight: 2",
        14,
        "unknown key 'weight' in comparison[0]",
    ),
    "missing-field": (7, None, 5, "missing required key 'revision' in critique_revision[0]"),
    "missing-top-field": (3, None, 1, "missing required key 'description'"),
    "number-not-text": (2, "version: 1.0", 2, "version: expected text, got a number 1.0"),
    "list-not-text": (
        6,
        "    critique:\n      - a",
        6,
        "critique_revision[0].critique: expected text",
    ),
    "bad-answer": (21, "      answer: C", 21, "must be 'A' or 'B'"),
    "duplicate-id": (
        8,
        "  - id: harm",
        8,
        "duplicate id 'harm' in critique_revision (first used on line 5)",
    ),
    "blank-text": (9, '    critique: "   "', 9, "critique_revision[1].critique: must not be empty"),
    "null-text": (9, "    critique:", 9, "must not be empty"),
    "bad-slug": (24, "    - id: Violence!", 24, "categories.harmful[0].id: 'Violence!'"),
    "dangling-principle": (19, "      principle: nope", 19, "unknown comparison principle 'nope'"),
    "empty-section": (11, "comparison: []\nunused:", 11, "comparison: needs at least one item"),
    "two-documents": (26, "---\nname: x", 26, "expected a single document"),
}


@pytest.mark.parametrize("case", ERROR_CASES.values(), ids=ERROR_CASES.keys())
def test_error_names_file_and_line(tmp_path, case):
    line, replacement, expected_line, fragment = case
    path = _write(tmp_path, _edit(line, replacement))
    message = _error(path)
    assert message.startswith(f"{path}:{expected_line}: "), message
    assert fragment in message


def test_tiny_constitution_is_valid(tmp_path):
    # The error cases above are only meaningful if the unedited file passes.
    c = load_constitution(_write(tmp_path, TINY))
    assert [p.id for p in c.critique_revision] == ["harm", "honesty"]
    assert c.fewshot.critique_revision == [] and c.categories.harmless == []


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", "empty file"),
        (b"# only a comment\n", "empty file"),
        (b"- a\n- b\n", ":1: top level: expected a mapping"),
        (b"name: a\nversion: \xff\n", ":2: not valid UTF-8"),
        (b"name: a\n\nb: \x07\n", ":3: invalid YAML: unacceptable character"),
    ],
)
def test_whole_file_errors(tmp_path, content, expected):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    message = _error(path)
    assert message.startswith(str(path)) and expected in message


def test_missing_file_and_directory(tmp_path):
    assert _error(tmp_path / "absent.yaml") == f"{tmp_path / 'absent.yaml'}: no such file"
    assert _error(tmp_path) == f"{tmp_path}: not a file"


def test_python_api_rejects_duplicates_too():
    data = yaml.safe_load(TINY)
    data["critique_revision"][1]["id"] = "harm"
    with pytest.raises(ValueError, match="duplicate id 'harm'"):
        Constitution.model_validate(data)


def _modified_default(tmp_path: Path) -> Path:
    data = yaml.safe_load(default_constitution_path().read_text(encoding="utf-8"))
    data["version"] = "1.1.0"
    data["critique_revision"] = [p for p in data["critique_revision"] if p["id"] != "privacy"]
    data["critique_revision"].append(
        {"id": "kindness", "critique": "Unkind?", "revision": "Be kind."}
    )
    data["comparison"][0]["text"] = "Which of these responses hurts nobody?"
    data["categories"]["harmless"].pop()
    return _write(tmp_path, yaml.safe_dump(data), "new.yaml")


def test_diff_finds_added_removed_changed(tmp_path):
    old, new = load_constitution(), load_constitution(_modified_default(tmp_path))
    d = diff_constitutions(old, new)
    assert not d["identical"]
    assert d["fields"] == {"version": {"old": "1.0.0", "new": "1.1.0"}}
    pairs = d["sections"]["critique_revision"]
    assert [p["id"] for p in pairs["added"]] == ["kindness"]
    assert [p["id"] for p in pairs["removed"]] == ["privacy"]
    assert pairs["changed"] == []
    (changed,) = d["sections"]["comparison"]["changed"]
    assert changed["id"] == "harm"
    assert changed["old"]["text"] == old.comparison_principle("harm").text
    assert changed["new"]["text"] == "Which of these responses hurts nobody?"
    assert [c["id"] for c in d["sections"]["categories.harmless"]["removed"]] == [
        old.categories.harmless[-1].id
    ]
    assert "categories.harmful" not in d["sections"] and not d["fewshot_changed"]
    text = format_diff(d)
    for fragment in ("+ kindness", "- privacy", "~ harm", "version: '1.0.0' -> '1.1.0'"):
        assert fragment in text


def test_diff_of_identical_constitutions_is_empty():
    d = diff_constitutions(load_constitution(), load_constitution())
    assert d["identical"] and d["fields"] == {} and d["sections"] == {}
    assert format_diff(d).endswith("no differences")


runner = CliRunner()


def test_cli_validate_hash_show(tmp_path):
    path = _write(tmp_path, TINY)
    c = load_constitution(path)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0
    assert result.output.strip() == (
        f"{path}: ok — tiny v0.1, 2 critique/revision pairs, 1 comparison principles, "
        f"hash {c.short_hash}"
    )
    result = runner.invoke(app, ["hash", str(path)])
    assert result.exit_code == 0 and result.output == c.hash + "\n"
    result = runner.invoke(app, ["show", "default"])
    assert result.exit_code == 0
    assert "constitutional-default" in result.output and "good-judgement" in result.output


def test_cli_init_writes_default_and_refuses_to_overwrite(tmp_path):
    path = tmp_path / "mine.yaml"
    assert runner.invoke(app, ["init", str(path)]).exit_code == 0
    assert path.read_text() == default_constitution_path().read_text()
    path.write_text("edited\n")
    result = runner.invoke(app, ["init", str(path)])
    assert isinstance(result.exception, UserError) and "already exists" in str(result.exception)
    assert path.read_text() == "edited\n"
    assert runner.invoke(app, ["init", str(path), "--force"]).exit_code == 0
    assert load_constitution(path).hash == load_constitution().hash


def test_cli_diff_json(tmp_path):
    new = _modified_default(tmp_path)
    result = runner.invoke(app, ["diff", "default", str(new), "--json"])
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert [p["id"] for p in data["sections"]["critique_revision"]["added"]] == ["kindness"]
    human = runner.invoke(app, ["diff", "default", str(new)])
    assert human.exit_code == 0 and "+ kindness" in human.output


def _cai(*args: str) -> subprocess.CompletedProcess:
    # Through `constitutional.cli.main`, which turns UserError into exit 2 + one stderr line.
    code = "import sys; from constitutional.cli import main; sys.argv[0] = 'cai'; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=False
    )


def test_cli_invalid_file_exits_2_with_one_line(tmp_path):
    path = _write(tmp_path, _edit(8, "  - id: harm"))
    result = _cai("constitution", "validate", str(path))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"cai: error: {path}:8: ")
    assert result.stderr.count("\n") == 1


def test_cli_validate_default_exits_0():
    result = _cai("constitution", "validate", "default")
    assert result.returncode == 0, result.stderr
    assert "16 critique/revision pairs, 16 comparison principles" in result.stdout
