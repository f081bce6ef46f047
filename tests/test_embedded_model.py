"""Integration tests on the real embedded model (SmolLM2-135M-Instruct from the GGUF wheel)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import cai

from constitutional.backends import GenerationRequest
from constitutional.backends.local import LocalBackend

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def embedded():
    return LocalBackend("embedded", batch_size=8)


def test_embedded_generation_matches_raw_greedy_decoding(embedded):
    question = [{"role": "user", "content": "What is the capital of France?"}]
    got = embedded.generate([GenerationRequest(messages=question, max_tokens=24)])[0]
    ids = embedded.tokenizer.apply_chat_template(
        question, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    raw = embedded.lm.generate(**ids, max_new_tokens=24, do_sample=False)
    expected = embedded.tokenizer.decode(
        raw[0, ids["input_ids"].shape[1] :], skip_special_tokens=True
    )
    assert got.text == expected
    assert "Paris" in got.text


def test_sl_cai_on_embedded_model_then_sft_raises_likelihood_of_revisions(tmp_path, embedded):
    out = tmp_path / "sl.jsonl"
    r = cai(
        "sl-cai",
        "generate",
        "--prompts",
        "builtin:advbench",
        "--limit",
        "8",
        "--rounds",
        "2",
        "--max-tokens",
        "48",
        "--fewshot",
        "1",
        "--helpful-ratio",
        "0",
        "--out",
        out,
        "--cache",
        tmp_path / "c.sqlite",
        timeout=1200,
    )
    assert r.returncode == 0, r.stderr
    traces = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(traces) == 8 and all(len(t["rounds"]) == 2 for t in traces)

    # Train on what SL-CAI wrote (kept rows; if the small model kept too few, the final
    # responses of all rows) and check the checkpoint now prefers those texts.
    rows = [json.loads(line) for line in (tmp_path / "sl.sft.jsonl").read_text().splitlines()]
    if len(rows) < 4:
        rows = [
            {
                "messages": [
                    {"role": "user", "content": t["prompt"]},
                    {"role": "assistant", "content": t["final_response"]},
                ]
            }
            for t in traces
        ]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = cai(
        "sl-cai",
        "train",
        "--data",
        data,
        "--base",
        "embedded",
        "--out",
        tmp_path / "ckpt",
        "--max-steps",
        "6",
        "--lr",
        "1e-3",
        "--batch-size",
        "4",
        timeout=1200,
    )
    assert r.returncode == 0, r.stderr

    tuned = LocalBackend(str(tmp_path / "ckpt"))

    def loglik(backend):
        return [
            backend.choice_logprobs([row["messages"][:1]], [row["messages"][1]["content"]])[0][0]
            for row in rows
        ]

    before, after = loglik(embedded), loglik(tuned)
    assert sum(after) > sum(before)
    assert sum(a > b for a, b in zip(after, before)) >= len(rows) * 3 // 4
    assert not torch.equal(
        tuned.lm.model.layers[0].self_attn.q_proj.weight,
        embedded.lm.model.layers[0].self_attn.q_proj.weight,
    )


def test_int8_precision_stays_close_to_fp32(embedded):
    """`--precision int8` is a speed switch, not a different judge: on a fixed prompt set the greedy
    first token mostly agrees with fp32 and the A/B judge probability moves little (README bounds:
    first-token agreement >= 80 %, mean |delta p(A)| <= 0.05)."""
    from constitutional.generate import load_prompts
    from constitutional.judge.layout import answer_prompt, judge_messages, renderer

    int8 = LocalBackend("embedded", batch_size=8, precision="int8")
    prompts = [
        r["prompt"]
        for r in load_prompts("builtin:self_instruct")[:10] + load_prompts("builtin:advbench")[:10]
    ]
    first = [
        GenerationRequest(messages=[{"role": "user", "content": p}], max_tokens=1) for p in prompts
    ]
    agree = [a.text == b.text for a, b in zip(embedded.generate(first), int8.generate(first))]

    refusal, comply = (
        "I can't help with that, but I can point you to safer resources.",
        "Sure, here is how.",
    )
    judged = [
        answer_prompt(
            renderer(embedded), judge_messages([], p, *pair, "Which response is less harmful?")
        )
        for p in prompts
        for pair in ((refusal, comply), (comply, refusal))
    ]

    def p_a(backend):
        lp = torch.tensor(backend.choice_logprobs(judged, ["A", "B"]))
        return torch.softmax(lp, dim=-1)[:, 0]

    delta = (p_a(embedded) - p_a(int8)).abs()
    print(
        f"int8 vs fp32: first-token agreement {sum(agree)}/{len(agree)}, "
        f"mean |dp(A)| {delta.mean():.4f}, max {delta.max():.4f}"
    )
    assert sum(agree) / len(agree) >= 0.8
    assert delta.mean() <= 0.05
