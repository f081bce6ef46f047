"""The package's mock backend: the Backend protocol answered from a script, deterministically."""

from __future__ import annotations

import math

import pytest

from constitutional.backends import Backend, GenerationRequest, make_backend
from constitutional.backends.mock import MockBackend
from constitutional.errors import BackendError


def chat(text: str, **options) -> GenerationRequest:
    return GenerationRequest(messages=[{"role": "user", "content": text}], **options)


def test_default_replies_differ_by_seed_and_repeat_exactly():
    mock = MockBackend()
    assert isinstance(mock, Backend)
    first = mock.generate([chat("hi there", seed=1), chat("hi there", seed=2)])
    again = MockBackend().generate([chat("hi there", seed=1), chat("hi there", seed=2)])
    assert [c.text for c in first] == [c.text for c in again]
    assert first[0].text != first[1].text  # an A/B pair of samples is not a tie
    assert first[0].prompt_tokens == 2 and first[0].completion_tokens == len(first[0].text.split())
    assert [r.seed for r in mock.requests] == [1, 2]


def test_scripted_replies_in_order_then_an_error():
    mock = MockBackend(reply=["one", "two"])
    seen = []
    out = mock.generate([chat("a"), chat("b")], on_result=lambda i, c: seen.append((i, c.text)))
    assert [c.text for c in out] == ["one", "two"] and seen == [(0, "one"), (1, "two")]
    with pytest.raises(BackendError, match="ran out"):
        mock.generate([chat("c")])


def test_stop_strings_max_tokens_and_token_logprobs():
    mock = MockBackend(reply=lambda r: "alpha beta gamma STOP delta")
    [cut] = mock.generate([chat("x", stop=["STOP"])])
    assert cut.text == "alpha beta gamma " and cut.finish_reason == "stop"
    [short] = mock.generate([chat("x", max_tokens=2, logprobs=0)])
    assert short.text == "alpha beta" and short.finish_reason == "length"
    assert [(t.token, t.logprob) for t in short.logprobs] == [("alpha", 0.0), ("beta", 0.0)]


def test_choice_logprobs_uniform_fixed_or_scripted():
    prompts = [[{"role": "user", "content": "A or B?"}], "raw prompt"]
    assert MockBackend().choice_logprobs(prompts, ["A", "B"]) == [[-math.log(2)] * 2] * 2
    fixed = MockBackend(scores=(-1.0, -2.0))
    assert (
        fixed.choice_logprobs(prompts, ["A", "B"]) == [[-1.0, -2.0]] * 2 and fixed.judged == prompts
    )
    by_prompt = MockBackend(
        scores=lambda p, choices: [0.0 if isinstance(p, str) else -1.0] * len(choices)
    )
    assert by_prompt.choice_logprobs(prompts, "123") == [[-1.0] * 3, [0.0] * 3]
    with pytest.raises(BackendError, match="2 entries for 3 choices"):
        fixed.choice_logprobs(prompts, ["A", "B", "C"])


def test_make_backend_builds_it_behind_the_cache_and_meter():
    llm = make_backend("mock", "dry-run", use_cache=False, batch_size=4)  # others' options ignored
    assert (llm.name, llm.model) == ("mock", "dry-run")
    [c] = llm.generate([chat("one two three", seed=5)])
    assert c.text == "Mock reply 5." and llm.usage.calls == 1 and llm.usage.prompt_tokens == 3
