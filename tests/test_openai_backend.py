"""OpenAIBackend against our own server on real uvicorn, with faults injected in front of it.

The upstream is `create_app(LocalBackend(tiny model))`, so every answer through HTTP can be
compared with the local backend called directly.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time

import pytest
from fastapi import FastAPI, Request
from faults import FaultInjector, running_server

from constitutional.backends.base import Backend, GenerationRequest
from constitutional.backends.openai_http import OpenAIBackend
from constitutional.errors import BackendError
from constitutional.serve import create_app

HELLO = [{"role": "user", "content": "Say hello."}]
REQUEST = GenerationRequest(messages=HELLO, max_tokens=6, temperature=0.0, seed=0)
FAST = {"timeout": 2.0, "max_retries": 3, "backoff_base": 0.01, "backoff_max": 0.1}


@pytest.fixture(scope="module")
def local(tiny_model_dir):
    from constitutional.backends.local import LocalBackend

    return LocalBackend(str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="module")
def upstream(local):
    """(base_url, injector): the real app behind a FaultInjector, on uvicorn."""
    injector = FaultInjector(create_app(local, model_name="tiny"), hang_s=5.0)
    with running_server(injector) as base_url:
        yield base_url, injector


@pytest.fixture
def injector(upstream):
    upstream[1].reset()
    return upstream[1]


@pytest.fixture
def base_url(upstream):
    return upstream[0]


def client(base_url: str, **overrides) -> OpenAIBackend:
    return OpenAIBackend("tiny", base_url=base_url, api_key="test-key", **{**FAST, **overrides})


def one_by_one(local, requests):
    """The local backend's answers, one request per batch, exactly as the server computes them."""
    return [local.generate([r])[0] for r in requests]


def same(a, b) -> bool:
    return (a.text, a.finish_reason, a.prompt_tokens, a.completion_tokens) == (
        b.text,
        b.finish_reason,
        b.prompt_tokens,
        b.completion_tokens,
    )


def test_implements_backend_protocol_and_fingerprint(base_url, monkeypatch):
    backend = client(base_url)
    assert isinstance(backend, Backend) and backend.name == "openai"
    assert backend.fingerprint() == f"openai:{base_url}:tiny"
    monkeypatch.setenv("OPENAI_BASE_URL", "http://example.invalid/v1/")
    monkeypatch.setenv("OPENAI_API_KEY", "from-env")
    from_env = OpenAIBackend("m")
    assert from_env.base_url == "http://example.invalid/v1" and from_env.api_key == "from-env"
    monkeypatch.delenv("OPENAI_BASE_URL")
    assert OpenAIBackend("m").base_url == "https://api.openai.com/v1"


def test_no_fault_equals_local(local, base_url, injector):
    [got] = client(base_url).generate([REQUEST])
    [want] = one_by_one(local, [REQUEST])
    assert same(got, want) and got.completion_tokens > 0
    assert injector.requests == 1


TRANSIENT = {
    429: "HTTP 429: injected 429",
    500: "HTTP 500: injected 500",
    503: "HTTP 503: injected 503",
    408: "HTTP 408: injected 408",
    "timeout": "timed out after 0.5s",
    "malformed": "malformed response (HTTP 200): Expecting property name",
    "missing": "malformed response (HTTP 200): missing field 'choices'",
    "reset": "RemoteProtocolError: peer closed connection",
}


@pytest.mark.parametrize("fault", list(TRANSIENT))
def test_transient_fault_is_retried(local, base_url, injector, fault):
    # Without retries the fault surfaces, as the failure we mean to inject...
    injector.reset([fault])
    with pytest.raises(BackendError, match="1 attempt; last error: " + re.escape(TRANSIENT[fault])):
        client(base_url, timeout=0.5, max_retries=0).generate([REQUEST])
    # ...with retries the call recovers and the answer is the fault-free one.
    faults = [fault] if fault == "timeout" else [fault, fault]  # each timeout costs 0.5 s
    injector.reset(faults)
    start = time.monotonic()
    [got] = client(base_url, timeout=0.5).generate([REQUEST])
    assert same(got, one_by_one(local, [REQUEST])[0])
    assert injector.requests == len(faults) + 1 and injector.plan == []
    assert time.monotonic() - start < 5


def test_retry_after_is_honoured_and_capped(base_url, injector):
    injector.reset([429], retry_after=0.4)
    start = time.monotonic()
    client(base_url, backoff_max=5.0).generate([REQUEST])
    assert time.monotonic() - start >= 0.4
    injector.reset([429, 429], retry_after=60)  # capped by backoff_max
    start = time.monotonic()
    client(base_url, backoff_max=0.1).generate([REQUEST])
    assert time.monotonic() - start < 3 and injector.requests == 3


def test_permanent_failure_gives_up_quickly_with_a_clear_message(base_url, injector):
    injector.reset(default=500)
    start = time.monotonic()
    with pytest.raises(BackendError) as info:
        client(base_url, max_retries=3).generate([REQUEST])
    assert time.monotonic() - start < 3
    message = str(info.value)
    assert f"POST {base_url}/chat/completions" in message
    assert "4 attempts" in message and "HTTP 500" in message and "injected 500" in message
    assert "\n" not in message
    assert injector.requests == 4


def test_unreachable_server_gives_up(local):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    start = time.monotonic()
    with pytest.raises(BackendError, match=r"failed after 3 attempts; last error: ConnectError"):
        client(dead, max_retries=2).generate([REQUEST])
    assert time.monotonic() - start < 3


def test_client_error_fails_at_once(base_url, injector):
    injector.reset([400, "ok"])
    with pytest.raises(BackendError, match=r"HTTP 400: injected 400"):
        client(base_url).generate([REQUEST])
    assert injector.requests == 1 and injector.plan == ["ok"]
    # A request the real server rejects: its validation message comes through.
    bad = GenerationRequest(messages=HELLO, temperature=5.0)
    with pytest.raises(BackendError, match=r"HTTP 400: temperature"):
        client(base_url).generate([bad])
    assert injector.requests == 2


def test_concurrent_requests_keep_order_and_match_local(local, base_url, injector):
    requests = [
        GenerationRequest(
            messages=[{"role": "user", "content": f"Count to {i}."}], max_tokens=4 + i % 3
        )
        for i in range(4)
    ] + [
        GenerationRequest(prompt=f"Story {i}:", max_tokens=5, temperature=1.0, seed=i)
        for i in range(4)
    ]
    seen = {}
    got = client(base_url, concurrency=3).generate(requests, on_result=seen.__setitem__)
    want = one_by_one(local, requests)
    assert all(same(g, w) for g, w in zip(got, want, strict=True))
    assert sorted(seen) == list(range(len(requests))) and all(seen[i] is got[i] for i in seen)
    assert injector.requests == len(requests) and 1 <= injector.max_in_flight <= 3


@pytest.mark.parametrize("kind", ["messages", "prompt"])
def test_token_logprobs_match_local(local, base_url, kind):
    request = GenerationRequest(
        **{kind: HELLO if kind == "messages" else "Once upon"}, max_tokens=4, logprobs=5
    )
    [got] = client(base_url).generate([request])
    [want] = one_by_one(local, [request])
    assert [t.token for t in got.logprobs] == [t.token for t in want.logprobs]
    for g, w in zip(got.logprobs, want.logprobs):
        assert g.logprob == pytest.approx(w.logprob, abs=1e-4)
        assert g.top == pytest.approx(w.top, abs=1e-4)


def single_token_choices(local, prompt, top: dict[str, float]) -> list[str]:
    """Top tokens usable as choices: no surrounding space, no other top token equal after
    stripping (so the server's match is that very token), and one token after the prompt."""
    from constitutional.backends.local import continuation_ids

    text = local.render(prompt)
    ids = local.tokenizer(text, add_special_tokens=False)["input_ids"]
    out = []
    for token in top:
        twins = [t for t in top if t.strip() == token]
        usable = token and token == token.strip() and twins == [token]
        if usable and len(continuation_ids(local.tokenizer, text, ids, token)) == 1:
            out.append(token)
    return out


def test_choice_logprobs_agree_with_local(local, base_url):
    prompts = [HELLO, [{"role": "user", "content": "Answer A or B."}], "Raw prompt:"]
    backend = client(base_url)
    probe = GenerationRequest(messages=HELLO, max_tokens=1, logprobs=20)
    top = backend.generate([probe])[0].logprobs[0].top
    choices = single_token_choices(local, HELLO, top)[:2] + ["zzzz-not-a-token"]
    assert len(choices) == 3, f"too few usable tokens in {list(top)}"
    got = backend.choice_logprobs(prompts, choices)
    want = local.choice_logprobs(prompts, choices)
    assert len(got) == len(prompts) and all(len(row) == len(choices) for row in got)
    # Both real choices are in prompt 0's top 20: the server's values are exact.
    assert got[0][:2] == pytest.approx(want[0][:2], abs=1e-3)
    # Anything absent from a top 20 gets the lowest returned value: an upper bound.
    for g_row, w_row in zip(got, want):
        for g, w in zip(g_row, w_row):
            assert g >= w - 1e-3
    assert got[0][2] == pytest.approx(min(top.values()), abs=1e-4)


# --- a scripted server for exact choice matching and missing logprobs ---------------------------


def scripted_app(
    top_logprobs: list[dict] | None, seen: list[Request], usage: bool = True
) -> FastAPI:
    """Answers every chat request with "A" and, if given, these top_logprobs (and usage unless told not to)."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        seen.append({"headers": dict(request.headers), "body": await request.json()})
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": "A"},
            "finish_reason": "length",
        }
        if top_logprobs is not None:
            entry = {"token": "A", "logprob": -0.1, "top_logprobs": top_logprobs}
            choice["logprobs"] = {"content": [entry]}
        return {
            "choices": [choice],
            **({"usage": {"prompt_tokens": 3, "completion_tokens": 1}} if usage else {}),
        }

    return app


def test_choice_matching_strips_whitespace_and_takes_the_best():
    tops = [
        {"token": " A", "logprob": -0.5},
        {"token": "A", "logprob": -0.1},
        {"token": "B\n", "logprob": -2.0},
        {"token": "C", "logprob": -3.0},
    ]
    seen = []
    with running_server(scripted_app(tops, seen)) as url:
        rows = client(url).choice_logprobs([HELLO, HELLO], ["A", " B", "Z"])
    assert rows == [[-0.1, -2.0, -3.0]] * 2
    body = seen[0]["body"]
    assert body["max_tokens"] == 1 and body["temperature"] == 0.0
    assert body["logprobs"] is True and body["top_logprobs"] == 20
    assert seen[0]["headers"]["authorization"] == "Bearer test-key"


@pytest.mark.parametrize("usage, tokens", [(True, 3), (False, 0)])
def test_choice_logprobs_count_the_servers_prompt_tokens(usage, tokens):
    """A judge's reads cost what the server says they cost; a server that reports no usage is
    counted as 0 rather than guessed with a tokenizer that may not be the server's."""
    from constitutional.backends import CachedBackend

    with running_server(scripted_app([{"token": "A", "logprob": -0.1}], [], usage=usage)) as url:
        rows, counted = client(url).choice_logprobs_with_usage([HELLO, HELLO], ["A", "B"])
        metered = CachedBackend(client(url), None)
        metered.choice_logprobs([HELLO, HELLO], ["A", "B"])
    assert rows == [[-0.1, -0.1]] * 2 and counted == [tokens, tokens]
    assert (metered.usage.calls, metered.usage.prompt_tokens, metered.usage.completion_tokens) == (
        2,
        2 * tokens,
        0,
    )


def test_choice_logprobs_without_server_support_is_a_clear_error():
    with running_server(scripted_app(None, [])) as url:
        backend = client(url)
        [completion] = backend.generate([REQUEST])  # plain generation still works
        assert completion.text == "A" and completion.logprobs is None
        with pytest.raises(BackendError, match=r"returned no logprobs") as info:
            backend.choice_logprobs([HELLO], ["A", "B"])
    assert url in str(info.value) and "choice_logprobs" in str(info.value)


def test_generate_works_inside_a_running_event_loop(local, base_url):
    async def caller():
        return client(base_url).generate([REQUEST])

    [got] = asyncio.run(caller())
    assert same(got, one_by_one(local, [REQUEST])[0])
