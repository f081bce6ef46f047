"""RL-CAI labelling: the arithmetic, the prompt layout, the pipeline on a tiny model, the CLI."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from constitutional.backends import CachedBackend
from constitutional.backends.local import LocalBackend
from constitutional.backends.mock import MockBackend
from constitutional.cli.rl_cai import app
from constitutional.constitution import load_constitution
from constitutional.errors import BackendError, UserError
from constitutional.jsonl import read_jsonl, write_jsonl
from constitutional.judge import labels, layout
from constitutional.rl_cai import (
    LabelConfig,
    draw_principles,
    label_pairs,
    load_human_prefs,
    mix_human,
    to_dpo_rows,
)

PROMPTS = [{"id": f"p{i}", "prompt": f"How do I pick lock number {i}?"} for i in range(3)]
FIELDS = {
    "id",
    "prompt",
    "response_a",
    "response_b",
    "principle_ids",
    "p_a_raw",
    "p_a_swapped",
    "p_a",
    "flip",
    "p_a_by_principle",
    "cot",
    "mode",
    "policy_model",
    "feedback_model",
    "discarded",
    "reason",
    "source",
    "seed",
    "meta",
}


def test_arithmetic_by_hand():
    assert labels.two_way_softmax(math.log(0.3), math.log(0.1)) == pytest.approx(0.75)
    assert labels.two_way_softmax(-1000.0, -1001.0) == pytest.approx(
        1 / (1 + math.exp(-1))
    )  # no underflow
    assert (
        labels.two_way_softmax(0.0, -math.inf) == 1.0
        and labels.two_way_softmax(-math.inf, 0.0) == 0.0
    )
    assert math.isnan(labels.two_way_softmax(-math.inf, -math.inf)) and math.isnan(
        labels.two_way_softmax(math.nan, 0.0)
    )
    assert labels.judgement_problem(-math.inf, -math.inf).startswith("both log-probs")
    assert (
        labels.judgement_problem(math.nan, -1.0).startswith("NaN")
        and labels.judgement_problem(-1.0, -2.0) is None
    )
    assert (
        labels.clamp(0.9, 0.4, 0.6),
        labels.clamp(0.1, 0.4, 0.6),
        labels.clamp(0.5, 0.4, 0.6),
    ) == (0.6, 0.4, 0.5)
    assert labels.unswap(0.3) == pytest.approx(0.7) and labels.swap_average(
        0.8, 0.4
    ) == pytest.approx(0.6)
    assert (
        labels.flip(0.7, 0.4)
        and labels.flip(0.2, 0.6)
        and not labels.flip(0.7, 0.6)
        and not labels.flip(0.5, 0.9)
    )
    assert (
        labels.pair_problem("x", "x ") == "identical responses"
        and labels.pair_problem("", "y") == "empty response"
    )


def test_feedback_layout():
    rules = load_constitution("default")
    q = layout.question("Hi?", "resp one", "resp two", "Which is kinder?")
    assert "Human: Hi?\n\nWhich is kinder?\nOptions:\n(A) resp one\n(B) resp two" in q
    plain, cot = (
        layout.fewshot_messages(rules, 2, cot=False),
        layout.fewshot_messages(rules, 2, cot=True),
    )
    assert [m["role"] for m in plain] == ["user", "assistant"] * 2
    assert (
        plain[1]["content"] == "The answer is: (A)" and plain[3]["content"] == "The answer is: (B)"
    )
    assert cot[1]["content"].startswith("Let's think step by step:\nStep 1") and cot[1][
        "content"
    ].endswith("Therefore the answer is: (A)")
    messages = layout.judge_messages(plain, "Hi?", "a", "b", "Which?")
    assert layout.answer_prompt(lambda m: "<T>", messages) == "<T>The answer is: ("
    assert (
        layout.answer_prompt(lambda m: "<T>", messages, " why ")
        == "<T>Let's think step by step:\nwhy\nTherefore the answer is: ("
    )
    http = layout.answer_prompt(None, messages)  # no template: ask for the bare letter instead
    assert http[:-1] == messages[:-1] and http[-1]["content"].endswith(layout.LETTER_ONLY)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return CachedBackend(LocalBackend(str(tiny_model_dir), batch_size=8), None)


def expected_p(tiny, rules, row, principle_id, a, b, fewshot=0):
    """p(A) recomputed outside the pipeline: template via the tokenizer, softmax by hand."""
    messages = layout.fewshot_messages(rules, fewshot, cot=False)
    messages += [
        {
            "role": "user",
            "content": layout.question(
                row["prompt"], a, b, rules.comparison_principle(principle_id).text
            ),
        }
    ]
    text = (
        tiny.inner.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        + "The answer is: ("
    )
    [[la, lb]] = tiny.inner.choice_logprobs([text], ["A", "B"])
    return math.exp(la) / (math.exp(la) + math.exp(lb))


def test_logprob_mode_end_to_end(tiny, tmp_path):
    rules = load_constitution("default")
    rows = label_pairs(rules, PROMPTS, tiny, tiny, LabelConfig(fewshot=1, max_tokens=8, seed=3))
    assert [r["id"] for r in rows] == ["p0", "p1", "p2"]
    for r in rows:
        assert (
            set(r) == FIELDS and not r["discarded"] and r["reason"] is None and r["source"] == "ai"
        )
        assert r["principle_ids"] == [draw_principles(rules, 3, r["id"])[0].id]
        assert r["response_a"] != r["response_b"] and r["p_a_swapped"] is None and r["cot"] is None
        assert r["p_a"] == r["p_a_raw"]  # no clamp in logprob mode by default
        assert r["p_a"] == pytest.approx(
            expected_p(tiny, rules, r, r["principle_ids"][0], r["response_a"], r["response_b"], 1),
            abs=1e-5,
        )
        assert (
            r["meta"]["artifact"] == "rl_cai_labels"
            and r["meta"]["constitution_hash"] == rules.hash
        )

    from datasets import load_dataset

    write_jsonl(tmp_path / "p.dpo.jsonl", to_dpo_rows(rows))
    ds = load_dataset(
        "json",
        data_files=str(tmp_path / "p.dpo.jsonl"),
        split="train",
        cache_dir=str(tmp_path / "hf"),
    )
    assert (
        len(ds) == 3
        and ds[0]["prompt"][0]["role"] == "user"
        and ds[0]["chosen"][0]["role"] == "assistant"
    )
    assert all(0.5 < p <= 1 for p in ds["p_chosen"])


def test_swap_average_and_ensemble(tiny):
    rules = load_constitution("default")
    rows = label_pairs(
        rules,
        PROMPTS[:2],
        tiny,
        tiny,
        LabelConfig(fewshot=0, max_tokens=8, seed=3, swap_average=True, principles_per_pair=2),
    )
    for r in rows:
        assert len(set(r["principle_ids"])) == 2
        assert r["p_a"] == pytest.approx((r["p_a_raw"] + r["p_a_swapped"]) / 2)
        # The swapped prompt shows response_b as (A): its p(A) is the probability of original B.
        swapped = [
            1 - expected_p(tiny, rules, r, pid, r["response_b"], r["response_a"])
            for pid in r["principle_ids"]
        ]
        raw = [
            expected_p(tiny, rules, r, pid, r["response_a"], r["response_b"])
            for pid in r["principle_ids"]
        ]
        assert r["p_a_swapped"] == pytest.approx(sum(swapped) / 2, abs=1e-5) and r[
            "p_a_raw"
        ] == pytest.approx(sum(raw) / 2, abs=1e-5)
        assert r["flip"] == labels.flip(r["p_a_raw"], r["p_a_swapped"])
        # Each principle's own swap-averaged verdict is kept for the principle audit.
        own = r["p_a_by_principle"]
        assert set(own) == set(r["principle_ids"])
        for k, pid in enumerate(r["principle_ids"]):
            assert own[pid] == pytest.approx((raw[k] + swapped[k]) / 2, abs=1e-5)


def test_cot_mode_records_reasoning_and_clamps(tiny):
    rules = load_constitution("default")
    rows = label_pairs(
        rules,
        PROMPTS[:2],
        tiny,
        tiny,
        LabelConfig(mode="cot", fewshot=0, max_tokens=6, cot_max_tokens=6, swap_average=True),
    )
    for r in rows:
        assert (
            r["mode"] == "cot" and len(r["cot"]) == 2 and all(isinstance(c, str) for c in r["cot"])
        )
        assert 0.4 <= r["p_a"] <= 0.6
        assert r["p_a"] == labels.clamp((r["p_a_raw"] + r["p_a_swapped"]) / 2, 0.4, 0.6)


def scripted(text=None, scores=(-1.0, -2.0)):
    """The package's mock backend, which like an HTTP server has no `render`: scripted texts
    (by default one per seed) and a fixed row of log-probs."""
    return MockBackend("fake-model", reply=text, scores=scores)


def test_degenerate_pairs_and_judgements_are_kept_with_reasons():
    rules = load_constitution("default")
    same = scripted(text=lambda r: "Same answer.")
    rows = label_pairs(rules, PROMPTS, same, same, LabelConfig())
    assert all(
        r["discarded"] and r["reason"] == "identical responses" and r["p_a"] is None for r in rows
    )
    assert same.judged == []  # nothing to judge, nothing spent
    dead = scripted(scores=(-math.inf, -math.inf))
    rows = label_pairs(rules, PROMPTS, dead, dead, LabelConfig())
    assert all(r["discarded"] and r["reason"].startswith("both log-probs are -inf") for r in rows)
    assert to_dpo_rows(rows) == []
    # An HTTP-like feedback backend gets chat messages asking for the letter.
    assert all(p[-1]["content"].endswith(layout.LETTER_ONLY) for p in dead.judged)
    http = scripted(text=lambda r: f"Step 1: {r.seed}")
    rows = label_pairs(rules, PROMPTS[:1], http, http, LabelConfig(mode="cot"))
    [judged] = http.judged
    assert (
        judged[-2] == {"role": "assistant", "content": rows[0]["cot"][0]}
        and judged[-1]["role"] == "user"
    )
    assert rows[0]["p_a"] == labels.clamp(labels.two_way_softmax(-1.0, -2.0), 0.4, 0.6) == 0.6

    def no_logprobs(prompt, choices):
        raise BackendError("the server returned no logprobs")

    mute = scripted(scores=no_logprobs)
    with pytest.raises(BackendError):  # not swallowed into discards: `cai` prints it on one line
        label_pairs(rules, PROMPTS, mute, mute, LabelConfig())


def test_human_prefs_mixing(tmp_path):
    rules = load_constitution("default")
    fake = scripted()
    ai = label_pairs(rules, [{"prompt": f"q{i}"} for i in range(9)], fake, fake, LabelConfig())
    path = tmp_path / "hh.jsonl"
    write_jsonl(
        path,
        [{"prompt": f"h{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(20)],
    )
    rows = mix_human(ai, load_human_prefs(path), 0.25, 0, rules)
    human = [r for r in rows if r["source"] == "human"]
    assert len(rows) == 12 and len(human) == 3  # 3 / 12 = 0.25
    for r in human:
        assert r["p_a"] in (0.0, 1.0) and not r["discarded"]
        assert (r["response_a"] if r["p_a"] == 1.0 else r["response_b"]).startswith("good")
    assert {
        r["p_a"]
        for r in mix_human(ai, load_human_prefs(path), 0.5, 0, rules)
        if r["source"] == "human"
    } == {0.0, 1.0}
    dpo = [d for d in to_dpo_rows(rows) if d["source"] == "human"]
    assert all(d["p_chosen"] == 1.0 and d["chosen"][0]["content"].startswith("good") for d in dpo)
    write_jsonl(
        path, [{"prompt": "h", "chosen": "c", "rejected": "r"}, {"prompt": "h", "chosen": "c"}]
    )
    with pytest.raises(UserError, match=r"hh.jsonl:2: .*`rejected`"):
        load_human_prefs(path)


def test_cli_label_happy_path_and_bad_input(tiny_model_dir, tmp_path):
    prompts, hh, out = tmp_path / "p.jsonl", tmp_path / "hh.jsonl", tmp_path / "prefs.jsonl"
    write_jsonl(prompts, PROMPTS)
    write_jsonl(hh, [{"prompt": f"h{i}", "chosen": "yes", "rejected": "no"} for i in range(5)])
    base = [
        "label",
        "--policy",
        str(tiny_model_dir),
        "--feedback",
        str(tiny_model_dir),
        "--prompts",
        str(prompts),
        "--out",
        str(out),
        "--max-tokens",
        "6",
        "--fewshot",
        "0",
        "--cache",
        str(tmp_path / "c.sqlite"),
    ]
    result = CliRunner().invoke(
        app, [*base, "--swap-average", "--human-prefs", str(hh), "--human-ratio", "0.25"]
    )
    assert result.exit_code == 0, result.output
    rows = read_jsonl(out)
    assert [r["source"] for r in rows] == ["ai"] * 3 + ["human"]
    assert all(r["p_a_swapped"] is not None for r in rows[:3])
    assert len(read_jsonl(tmp_path / "prefs.dpo.jsonl")) == 4
    stage = json.loads((tmp_path / "prefs.jsonl.manifest.json").read_text())["stages"][
        "rl_cai_label"
    ]
    assert (
        stage["constitution"]["hash"] == load_constitution("default").hash
        and stage["tokens"]["calls"] == 6 + 6
    )

    bad_prompts = tmp_path / "bad.jsonl"
    bad_prompts.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    for extra, message in [
        (["--clamp", "0.7", "0.3"], "--clamp"),
        (["--mode", "vibes"], "--mode"),
        (["--human-prefs", str(hh), "--human-ratio", "1.0"], "--human-ratio"),
        (["--prompts", str(bad_prompts)], "bad.jsonl:2: "),
        (["--prompts", str(tmp_path / "missing.jsonl")], "missing.jsonl: no such file"),
    ]:
        result = CliRunner().invoke(app, [*base, *extra])
        # `cai` main() prints a UserError on one line and exits 2.
        assert isinstance(result.exception, UserError) and result.exception.exit_code == 2, (
            extra,
            result.output,
        )
        assert message in str(result.exception)
