"""The local backend on a tiny random model: batching, seeded sampling, stops, log-probs."""

from __future__ import annotations

import pytest
import torch

from constitutional.backends.base import GenerationRequest
from constitutional.backends.local import LocalBackend, cut_at_stop, plan_batches
from constitutional.errors import UserError

CHATS = [
    [{"role": "user", "content": "Say hello."}],
    [{"role": "user", "content": "Write a long story about a lighthouse keeper and a storm."}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Why is the sky blue?"},
    ],
]


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    return LocalBackend(str(tiny_model_dir), batch_size=2)


def test_greedy_batched_equals_one_by_one(backend):
    requests = [GenerationRequest(messages=m, max_tokens=12) for m in CHATS]
    batched = backend.generate(requests)
    single = [backend.generate([r])[0] for r in requests]
    assert [c.text for c in batched] == [c.text for c in single]
    assert all(c.completion_tokens == 12 and c.finish_reason == "length" for c in batched)


def test_sampling_depends_on_seed_not_on_batch(backend):
    requests = [
        GenerationRequest(messages=m, temperature=1.0, max_tokens=10, seed=7) for m in CHATS
    ]
    forward = [c.text for c in backend.generate(requests)]
    backward = [c.text for c in backend.generate(requests[::-1])][::-1]
    assert forward == backward
    other_seed = [
        GenerationRequest(messages=m, temperature=1.0, max_tokens=10, seed=8) for m in CHATS
    ]
    assert [c.text for c in backend.generate(other_seed)] != forward


def test_rows_keep_their_own_max_tokens_and_on_result(backend):
    requests = [GenerationRequest(prompt="a b c", max_tokens=n) for n in (3, 9)]
    seen = []
    out = backend.generate(requests, on_result=lambda i, c: seen.append(i))
    assert [c.completion_tokens for c in out] == [3, 9]
    assert sorted(seen) == [0, 1]


def test_stop_string_is_cut_and_reported(backend):
    free = backend.generate([GenerationRequest(prompt="once upon", max_tokens=16)])[0]
    stop = free.text[len(free.text) // 2 :][:3]
    assert stop.strip(), "the random model produced whitespace only"
    cut = backend.generate([GenerationRequest(prompt="once upon", max_tokens=16, stop=[stop])])[0]
    assert cut.finish_reason == "stop"
    assert cut.text == free.text[: free.text.index(stop)]


def test_logprobs_match_a_forward_pass(backend):
    c = backend.generate([GenerationRequest(prompt="hello world", max_tokens=4, logprobs=3)])[0]
    assert len(c.logprobs) == 4
    ids = backend.tokenizer("hello world", add_special_tokens=False)["input_ids"]
    logits = backend.lm(torch.tensor([ids])).logits[0, -1]
    first = torch.log_softmax(logits.float(), -1)
    assert c.logprobs[0].logprob == pytest.approx(first.max().item(), abs=1e-4)  # greedy = argmax
    assert list(c.logprobs[0].top.values()) == sorted(c.logprobs[0].top.values(), reverse=True)


@pytest.mark.parametrize("choices", [["A", "B"], [" yes", " no thanks"]])
def test_choice_logprobs_agree_with_full_forward_pass(backend, choices):
    prompts = [CHATS[0], "The answer is", CHATS[2]]
    got = backend.choice_logprobs(prompts, choices)
    for prompt, row in zip(prompts, got):
        text = backend.render(prompt)
        for choice, value in zip(choices, row):
            ids = backend.tokenizer(text + choice, add_special_tokens=False)["input_ids"]
            n_prompt = len(backend.tokenizer(text, add_special_tokens=False)["input_ids"])
            logp = torch.log_softmax(backend.lm(torch.tensor([ids])).logits[0].float(), -1)
            expected = sum(logp[j - 1, ids[j]].item() for j in range(n_prompt, len(ids)))
            assert value == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("choices", [["A", "B"], [" yes", " no thanks"]])
def test_choice_logprobs_report_each_prompts_length_in_tokens(backend, choices):
    prompts = [CHATS[0], "The answer is", CHATS[2]]
    rows, tokens = backend.choice_logprobs_with_usage(prompts, choices)
    assert rows == backend.choice_logprobs(prompts, choices)
    assert tokens == [
        len(backend.tokenizer(backend.render(p), add_special_tokens=False)["input_ids"])
        for p in prompts
    ]


def test_plan_batches_is_a_function_of_the_requests():
    requests = [GenerationRequest(prompt="x", max_tokens=n) for n in (5, 5, 9, 5)]
    plan = plan_batches(requests, [[1, 2], [1], [1], [1, 2, 3]], batch_size=2)
    assert plan == [[1, 0], [3, 2]]


def test_cut_at_stop_takes_earliest():
    assert cut_at_stop("abc STOP def END", ["END", "STOP"]) == ("abc ", True)
    assert cut_at_stop("abc", ["x"]) == ("abc", False)


def test_unknown_model_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such model"):
        LocalBackend(str(tmp_path / "missing"))


def test_shared_prefix_is_prefilled_once_and_changes_nothing(backend):
    from constitutional.backends.local import MIN_SHARED_PREFIX, shared_prefix_len

    assert shared_prefix_len([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert shared_prefix_len([[7, 8], [7, 8]]) == 1  # each row keeps a token of its own
    preamble = "Here are the rules you follow in every answer. " * 8
    requests = [
        GenerationRequest(prompt=preamble + q, max_tokens=8)
        for q in ("Hi.", "Tell me a joke, please.", "Why?")
    ]
    ids = backend._encode([r.prompt for r in requests])
    assert shared_prefix_len(ids) >= MIN_SHARED_PREFIX
    inputs, common = backend._inputs_with_shared_prefix(ids)
    assert "past_key_values" in inputs and common == shared_prefix_len(ids)
    batched = [c.text for c in backend.generate(requests)]
    single = [backend.generate([r])[0].text for r in requests]
    assert batched == single
    # The judge's A/B read takes the same path: one prefill of the prefix, same log-probs.
    prompts = [r.prompt for r in requests]
    together = backend.choice_logprobs(prompts, [" A", " B"])
    alone = [backend.choice_logprobs([p], [" A", " B"])[0] for p in prompts]
    for got, want in zip(together, alone, strict=True):
        assert got == pytest.approx(want, abs=1e-4)


def test_continuous_batching_returns_what_one_by_one_decoding_returns(tiny_model_dir):
    """More requests than slots, mixed prompt lengths and max_tokens: rows finish at different
    steps, waiting ones take their slots mid-flight (longer prompts widen the shared timeline),
    and still every row matches decoding it alone, greedy or sampled."""
    slots = LocalBackend(str(tiny_model_dir), batch_size=3)
    alone = LocalBackend(str(tiny_model_dir), batch_size=1)
    words = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "a",
        "lazy",
        "dog",
        "near",
        "the",
        "river",
        "bank",
        "at",
        "dawn",
    ]
    requests = [
        GenerationRequest(
            prompt=" ".join(words[: 2 + 3 * i]),
            max_tokens=3 + (5 * i) % 11,
            temperature=0.9 if i % 3 == 0 else 0.0,
            seed=i,
        )
        for i in range(8)
    ]
    together = slots.generate(requests)
    one_by_one = [alone.generate([r])[0] for r in requests]
    assert [c.text for c in together] == [c.text for c in one_by_one]
    assert [c.completion_tokens for c in together] == [r.max_tokens for r in requests]


def test_slots_shrink_to_fit_the_kv_memory_budget():
    from types import SimpleNamespace

    from constitutional.backends.continuous import slots_for_budget

    config = SimpleNamespace(
        num_hidden_layers=2,
        num_key_value_heads=1,
        num_attention_heads=4,
        head_dim=8,
        hidden_size=32,
    )
    per_slot = 2 * 100 * (2 * 2 * 1 * 8 * 4)  # growth headroom x context x bytes per token
    assert slots_for_budget(config, 100, 64, budget=5 * per_slot) == 5
    assert slots_for_budget(config, 100, 3, budget=5 * per_slot) == 3  # never above the request
    assert slots_for_budget(config, 100, 64, budget=1) == 1  # always at least one


def test_prefill_chunks_keep_one_long_prompt_from_padding_the_rest():
    from constitutional.backends.continuous import prefill_chunks

    short, long_ = [[5] * 40 for _ in range(30)], [[5] * 1000]
    chunks = prefill_chunks(short + long_)
    assert chunks == [list(range(30)), [30]]
    # A shared prefix is prefilled once per batch: padding up to its length beats prefilling it twice.
    prefix = list(range(100))
    assert prefill_chunks([prefix + [1] * 3, prefix + [2] * 60, prefix + [3] * 4]) == [[0, 2, 1]]
    assert len(prefill_chunks([prefix + [1] * 3, prefix + [2] * 300, prefix + [3] * 4])) == 2
    lengths = [3, 50, 7, 7, 200, 8, 49]
    chunks = prefill_chunks([[1] * n for n in lengths])
    assert sorted(i for c in chunks for i in c) == list(range(len(lengths)))
    for chunk in chunks:  # each batch's padded size stays within the slack
        assert len(chunk) * max(lengths[i] for i in chunk) <= 1.25 * sum(lengths[i] for i in chunk)


def test_context_groups_keep_a_long_request_apart():
    from constitutional.backends.continuous import STEP_COST_IN_COLUMNS, context_groups

    narrow = [300, 200, 250, 380] * 10  # 40 rows: reading 1,700 more columns each costs too much
    contexts = narrow + [1500, 2100]
    groups = context_groups(contexts, slots=128)
    assert groups == [sorted(range(40), key=lambda i: (contexts[i], i)), [40, 41]]
    for g in groups:
        assert max(contexts[i] for i in g) <= 2 * min(contexts[i] for i in g)
    # Few rows, free slots: the wider group joins (4 rows x 1,720 columns < one step's fixed cost).
    few = [300, 1500, 200, 250, 380, 2100]
    assert 4 * (2100 - 380) <= STEP_COST_IN_COLUMNS
    assert context_groups(few, slots=128) == [[2, 3, 0, 4, 1, 5]]
    assert context_groups(few, slots=5) == [[2, 3, 0, 4], [1, 5]]  # together they would not fit


@pytest.mark.parametrize("kv_dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_prefix_attention_equals_attention_over_the_whole_context(kv_dtype, atol):
    """One row's query against [shared prefix, own columns] gives SDPA's answer over the
    concatenation; rows that do not use the prefix ignore it. With bf16 KV (int8 mode) the
    answer is SDPA's on the fp32 KV up to bf16 rounding."""
    from types import SimpleNamespace

    import torch.nn.functional as F

    from constitutional.backends.prefix_attention import SharedPrefix, prefix_attention

    torch.manual_seed(0)
    rows, heads, kv_heads, dim, n_prefix, cols = 3, 6, 2, 8, 5, 4
    q = torch.randn(rows, heads, 1, dim)
    k, v = torch.randn(rows, kv_heads, cols, dim), torch.randn(rows, kv_heads, cols, dim)
    pk, pv = torch.randn(kv_heads, n_prefix, dim), torch.randn(kv_heads, n_prefix, dim)
    mask = torch.zeros(rows, 1, 1, cols)
    mask[2, ..., 0] = torch.finfo(torch.float32).min  # row 2 does not own its first column
    prefix = SharedPrefix(
        list(range(n_prefix)),
        [pk.to(kv_dtype)],
        [pv.to(kv_dtype)],
        rows=torch.tensor([True, True, False]),
    )
    got, _ = prefix_attention(
        SimpleNamespace(layer_idx=0), q, k.to(kv_dtype), v.to(kv_dtype), mask, shared_prefix=prefix
    )
    assert got.dtype == torch.float32
    if kv_dtype != torch.float32:  # no prefix either: the low-precision KV path, not SDPA
        alone, _ = prefix_attention(
            SimpleNamespace(layer_idx=0), q[2:], k[2:].to(kv_dtype), v[2:].to(kv_dtype), mask[2:]
        )
        assert torch.allclose(alone, got[2:], atol=1e-6)

    full_k = torch.cat([pk.expand(rows, -1, -1, -1), k], dim=2).repeat_interleave(
        heads // kv_heads, 1
    )
    full_v = torch.cat([pv.expand(rows, -1, -1, -1), v], dim=2).repeat_interleave(
        heads // kv_heads, 1
    )
    for r in range(2):
        want = F.scaled_dot_product_attention(q[r : r + 1], full_k[r : r + 1], full_v[r : r + 1])
        assert torch.allclose(got[r], want[0].transpose(0, 1), atol=atol)
    own_k, own_v = k[2:, :, 1:].repeat_interleave(3, 1), v[2:, :, 1:].repeat_interleave(3, 1)
    want = F.scaled_dot_product_attention(q[2:], own_k, own_v)
    assert torch.allclose(got[2], want[0].transpose(0, 1), atol=atol)


def test_engine_holds_a_shared_prefix_once(backend, monkeypatch):
    from constitutional.backends import continuous

    seen = []
    original = continuous.ContinuousBatcher._step

    def step(self, on_finished):
        seen.append((self.prefix is not None and bool(self.on_prefix.any()), self.layers[0].length))
        return original(self, on_finished)

    monkeypatch.setattr(continuous.ContinuousBatcher, "_step", step)
    preamble = "Here are the rules you follow in every answer. " * 30
    assert len(backend._encode([preamble])[0]) >= continuous.MIN_HELD_PREFIX
    requests = [
        GenerationRequest(prompt=preamble + q, max_tokens=4)
        for q in ("Hi.", "Why is the sky blue?")
    ]
    n_preamble = len(backend._encode([preamble])[0])
    batched = [c.text for c in backend.generate(requests)]
    assert seen and all(used for used, _ in seen)
    assert (
        max(width for _, width in seen) < n_preamble
    )  # the timeline holds only the rows' own tokens
    seen.clear()
    assert batched == [backend.generate([r])[0].text for r in requests]  # alone: no prefix held
    assert seen and not any(used for used, _ in seen)


def test_prompts_extending_a_finished_row_reuse_its_kv_and_decode_the_same(
    tiny_model_dir, monkeypatch
):
    """A critique-then-revision pattern: the second call's prompts extend the first call's rows
    (prompt + generated text). They start from the stored KV, and decode exactly what a backend
    without the store decodes, greedy or sampled, mixed with a prompt that extends nothing."""
    from constitutional.backends.kv_store import MIN_REUSE

    monkeypatch.setenv("CAI_KV_STORE_GB", "0")
    plain = LocalBackend(str(tiny_model_dir), batch_size=3)
    monkeypatch.delenv("CAI_KV_STORE_GB")
    reusing = LocalBackend(str(tiny_model_dir), batch_size=3)
    assert plain.kv_store is None and reusing.kv_store is not None

    preamble = "Here are the rules you follow in every answer. " * 30  # long enough to be held once
    asks = ["Hi.", "Why is the sky blue?", "Name a river.", "Count to three."]
    first = [
        GenerationRequest(prompt=preamble + q, max_tokens=6 + i, temperature=0.8 * (i % 2), seed=i)
        for i, q in enumerate(asks)
    ]
    drafts = reusing.generate(first)
    assert [c.text for c in drafts] == [c.text for c in plain.generate(first)]

    second = [
        GenerationRequest(
            prompt=r.prompt + c.text + " Now say it better.",
            max_tokens=5,
            temperature=r.temperature,
            seed=r.seed,
        )
        for r, c in zip(first, drafts)
    ]
    second.append(GenerationRequest(prompt="Something new entirely.", max_tokens=5))
    for r, old in zip(second, first):
        reuse = reusing.kv_store.lookup(reusing._encode([r.prompt])[0])
        assert reuse is not None and reuse.n >= len(reusing._encode([old.prompt])[0]) - 1
    assert reusing.kv_store.lookup(reusing._encode([second[-1].prompt])[0]) is None
    assert len(reusing._encode([preamble])[0]) >= MIN_REUSE
    assert [c.text for c in reusing.generate(second)] == [c.text for c in plain.generate(second)]


def test_kv_store_keeps_the_longest_match_within_its_budget():
    import numpy as np

    from constitutional.backends.kv_store import KVStore, StoredRow

    def row(ids):
        kv = [torch.zeros(1, len(ids), 4)]
        return StoredRow(np.asarray(ids), None, kv, [t.clone() for t in kv])

    one = row(list(range(40)))  # 40 tokens x 4 floats x 4 bytes x (keys + values) = 1,280 bytes
    store = KVStore(budget=4 * one.nbytes)
    store.add(one)
    store.add(row(list(range(50))))
    assert store.lookup(list(range(45)) + [99]).n == 45  # the longer stored row matches further
    assert store.lookup(list(range(50))).n == 49  # the last token always runs
    assert store.lookup([7] * 60) is None  # below MIN_REUSE: nothing
    store.add(row([1] * 40))
    store.add(row([2] * 40))  # over budget: the least recently used (range(40)) goes
    assert store.nbytes <= store.budget and len(store.rows) == 3
    assert store.lookup(list(range(50))).row.ids.tolist() == list(range(50))


def test_bf16_kv_decodes_from_fp32_prefill(tiny_model_dir):
    """int8 mode's bf16 KV timeline, with a held prefix and stored rows: the first token comes
    from the fp32 prefill, so it equals fp32's; later tokens read bf16 KV and run to length."""
    fp32 = LocalBackend(str(tiny_model_dir), batch_size=3)
    low = LocalBackend(str(tiny_model_dir), batch_size=3)
    low.kv_dtype = torch.bfloat16
    preamble = "Here are the rules you follow in every answer. " * 30
    requests = [
        GenerationRequest(prompt=preamble + q, max_tokens=6, logprobs=0)
        for q in ("Hi.", "Why?", "Go on.")
    ]
    for _ in range(2):  # the second time, each prompt starts from its stored row
        want, got = fp32.generate(requests), low.generate(requests)
        assert [c.logprobs[0].token for c in got] == [c.logprobs[0].token for c in want]
        assert all(c.completion_tokens == 6 for c in got)
    assert low.kv_store.rows and all(
        r.keys[0].dtype == torch.bfloat16 for r in low.kv_store.rows.values()
    )


def test_min_tokens_holds_off_eos_and_stop_strings(backend):
    tok = backend.tokenizer
    free = backend.generate([GenerationRequest(prompt="once upon", max_tokens=8, logprobs=0)])[0]
    first = tok.convert_ids_to_tokens(
        tok.convert_tokens_to_ids(tok.tokenize(free.logprobs[0].token))[0]
    )
    eos = tok.eos_token
    tok.eos_token = first  # the model's own first pick ends the reply: without min_tokens, at once
    try:
        request = GenerationRequest(prompt="once upon", max_tokens=8)
        assert backend.generate([request])[0].completion_tokens == 1
        held = backend.generate(
            [GenerationRequest(prompt="once upon", max_tokens=8, min_tokens=6)]
        )[0]
        assert held.completion_tokens >= 6 and not held.text.startswith(free.logprobs[0].token)
    finally:
        tok.eos_token = eos
    stop = free.text[1:3]
    assert (
        backend.generate([GenerationRequest(prompt="once upon", max_tokens=8, stop=[stop])])[
            0
        ].completion_tokens
        < 8
    )
    late = backend.generate(
        [GenerationRequest(prompt="once upon", max_tokens=8, stop=[stop], min_tokens=8)]
    )[0]
    assert late.completion_tokens == 8
    assert "min_tokens" not in request.to_dict()  # cache keys of requests without it are unchanged
