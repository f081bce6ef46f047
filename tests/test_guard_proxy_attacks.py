"""The guard proxy under attack: each test sends a request (or has the upstream send an answer)
that once got unchecked text through, crashed the proxy or skipped the audit log, and asserts
what happens now. The guard flags any text containing MARKER, so MARKER anywhere in what the
client receives means unchecked text went through."""

from __future__ import annotations

import json
import sqlite3

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse
from faults import running_server
from test_guard_proxy import MARKER, ScriptedGuard, stream_chat

from constitutional.guard.proxy import create_guard_app

HELLO = [{"role": "user", "content": "Say hello."}]
BENIGN = "Hello! The weather is mild today."
HARMFUL = f"Step one of the {MARKER} recipe: mix the following."


class HostileUpstream:
    """An upstream that answers whatever the test sets: a status and JSON body, or SSE events."""

    def __init__(self):
        self.status, self.body, self.events = 200, {}, []
        self.app = FastAPI()
        self.app.post("/v1/chat/completions")(self.chat)

    async def chat(self, body: dict):
        if body.get("stream") and self.status == 200:
            lines = [f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in self.events]
            return StreamingResponse(
                iter([*lines, "data: [DONE]\n\n"]), media_type="text/event-stream"
            )
        return JSONResponse(self.body, status_code=self.status)


@pytest.fixture(scope="module")
def hostile():
    upstream = HostileUpstream()
    with running_server(upstream.app) as url:
        yield upstream, url


@pytest.fixture()
def proxy(hostile, tmp_path):
    upstream, url = hostile
    upstream.status, upstream.body, upstream.events = 200, {}, []
    app = create_guard_app(ScriptedGuard(), url, audit_db=tmp_path / "a.db", holdback_chars=8)
    with running_server(app) as base:
        yield base, upstream


def audit(tmp_path) -> list[dict]:
    with sqlite3.connect(tmp_path / "a.db") as con:
        con.row_factory = sqlite3.Row
        return [dict(r) for r in con.execute("SELECT * FROM requests ORDER BY time")]


def metric(base: str, name: str) -> int:
    text = httpx.get(f"{base.removesuffix('/v1')}/metrics").text
    return int(
        next(
            line.split()[1]
            for line in text.splitlines()
            if line.startswith(f"cai_guard_{name}_total ")
        )
    )


def answer(content=BENIGN, **extra_message):
    """A chat.completion whose first choice says `content`."""
    message = {"role": "assistant", "content": content, **extra_message}
    return {
        "id": "up",
        "object": "chat.completion",
        "created": 0,
        "model": "up",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 7, "total_tokens": 10},
    }


def chunk(delta, finish=None, **extra):
    return {
        "id": "up",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }


def sse(base, **body) -> tuple[int, list]:
    r = httpx.post(
        f"{base}/chat/completions", json={"messages": HELLO, "stream": True, **body}, timeout=30
    )
    events = [e.removeprefix("data: ") for e in r.text.split("\n\n") if e]
    return r, [json.loads(e) for e in events if e != "[DONE]"]


# --- non-streamed answers carry only checked text -----------------------------------------------

SMUGGLED = {
    "second choice": lambda b: b["choices"].append(
        {"index": 1, "message": {"role": "assistant", "content": HARMFUL}, "finish_reason": "stop"}
    ),
    "tool_calls": lambda b: b["choices"][0]["message"].update(
        tool_calls=[
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": HARMFUL}}
        ]
    ),
    "reasoning_content": lambda b: b["choices"][0]["message"].update(reasoning_content=HARMFUL),
    "logprobs": lambda b: b["choices"][0].update(
        logprobs={"content": [{"token": HARMFUL, "logprob": 0.0}]}
    ),
    "top-level field": lambda b: b.update(system_fingerprint=HARMFUL),
    "usage field": lambda b: b["usage"].update(note=HARMFUL),
    "finish_reason": lambda b: b["choices"][0].update(finish_reason=HARMFUL),
}


@pytest.mark.parametrize("where", sorted(SMUGGLED))
def test_text_outside_the_checked_content_never_reaches_the_client(proxy, tmp_path, where):
    base, upstream = proxy
    upstream.body = answer()
    SMUGGLED[where](upstream.body)
    r = httpx.post(f"{base}/chat/completions", json={"messages": HELLO}, timeout=30)
    assert r.status_code == 200 and MARKER not in r.text
    body = r.json()
    [choice] = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": BENIGN}
    assert choice["finish_reason"] == "stop" and choice["logprobs"] is None
    assert set(body) == {"id", "object", "created", "model", "choices", "usage"}
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 7, "total_tokens": 10}
    [row] = audit(tmp_path)
    assert row["decision"] == "allowed" and row["output_checks"] == 1


def test_harmful_first_choice_is_still_refused(proxy):
    base, upstream = proxy
    upstream.body = answer(HARMFUL)
    r = httpx.post(f"{base}/chat/completions", json={"messages": HELLO}, timeout=30)
    assert r.json()["choices"][0]["finish_reason"] == "content_filter" and MARKER not in r.text


@pytest.mark.parametrize(
    "body",
    [{"choices": {"0": 1}}, {"choices": [{"message": {"content": 7}}]}, [1, 2], {}, "{" + HARMFUL],
)
def test_malformed_answer_is_a_502_with_an_audit_row(proxy, tmp_path, body):
    base, upstream = proxy
    upstream.body = body  # a str is sent as a JSON string: not an answer either
    r = httpx.post(f"{base}/chat/completions", json={"messages": HELLO}, timeout=30)
    assert (
        r.status_code == 502
        and MARKER not in r.text
        and r.json()["error"]["message"] == "the upstream model failed: UpstreamError"
    )
    [row] = audit(tmp_path)
    assert row["decision"] == "upstream_error" and row["error"] == "upstream: UpstreamError"


# --- upstream error bodies are never forwarded ------------------------------------------------


@pytest.mark.parametrize("status, expected", [(400, 502), (500, 502), (429, 429), (401, 502)])
@pytest.mark.parametrize("stream", [False, True])
def test_upstream_error_text_is_replaced_by_our_own(proxy, tmp_path, status, expected, stream):
    base, upstream = proxy
    upstream.status = status
    upstream.body = {"error": {"message": HARMFUL, "type": HARMFUL, "param": None, "code": HARMFUL}}
    r = httpx.post(
        f"{base}/chat/completions", json={"messages": HELLO, "stream": stream}, timeout=30
    )
    assert r.status_code == expected and MARKER not in r.text
    assert r.json()["error"]["message"] == f"the upstream model answered HTTP {status}"
    [row] = audit(tmp_path)
    assert row["decision"] == "upstream_error" and row["error"] == f"upstream: HTTP {status}"


# --- streams: only checked content, and every failure ends in an error event + audit row -----


def test_stream_forwards_only_checked_content_and_token_counts(proxy, tmp_path):
    base, upstream = proxy
    upstream.events = [
        chunk({"role": "assistant", "content": "", "reasoning_content": HARMFUL}),
        chunk(
            {"content": BENIGN, "tool_calls": [{"function": {"arguments": HARMFUL}}]}, note=HARMFUL
        ),
        {"id": "up", "choices": [], "note": HARMFUL},  # no usage: dropped
        chunk({}, "stop", system_fingerprint=HARMFUL),
        {
            "id": "up",
            "choices": [],
            "usage": {
                "prompt_tokens": 1,
                "completion_tokens": 2,
                "total_tokens": 3,
                "note": HARMFUL,
            },
        },
    ]
    r, chunks = sse(base, stream_options={"include_usage": True})
    assert MARKER not in r.text
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == BENIGN
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {
        "prompt_tokens": 1,
        "completion_tokens": 2,
        "total_tokens": 3,
    }
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert audit(tmp_path)[0]["decision"] == "allowed"


BROKEN_CHUNKS = {
    "delta null": chunk(None),
    "choices an object": {"id": "up", "choices": {"0": {"delta": {"content": HARMFUL}}}},
    "content a number": chunk({"content": 12}),
    "error object": {"error": {"message": HARMFUL, "type": "server_error"}},
    "not json": "{" + HARMFUL,
    "a list": [HARMFUL],
}


@pytest.mark.parametrize("name", sorted(BROKEN_CHUNKS))
def test_broken_stream_chunk_ends_with_an_error_event_and_an_audit_row(proxy, tmp_path, name):
    base, upstream = proxy
    upstream.events = [chunk({"content": BENIGN}), BROKEN_CHUNKS[name], chunk({"content": HARMFUL})]
    r, chunks = sse(base)
    assert r.status_code == 200 and MARKER not in r.text
    assert chunks[-1]["error"]["type"] == "server_error"
    assert chunks[-1]["error"]["message"].startswith("the upstream model failed mid-stream")
    [row] = audit(tmp_path)
    assert row["decision"] == "upstream_error" and row["error"].startswith("upstream: ")
    assert metric(base, "upstream_errors") == 1


class BrokenGuard(ScriptedGuard):
    """Answers output checks with something that is not a Verdict: a bug inside the stream."""

    def check_output(self, messages, response_so_far):
        return "not a verdict"


@pytest.mark.parametrize("stream", [False, True])
def test_a_bug_inside_the_proxy_still_ends_cleanly_with_an_audit_row(hostile, tmp_path, stream):
    upstream, url = hostile
    upstream.status, upstream.body, upstream.events = 200, answer(), [chunk({"content": BENIGN})]
    app = create_guard_app(BrokenGuard(), url, audit_db=tmp_path / "a.db", holdback_chars=0)
    with running_server(app) as base:
        if stream:
            r, chunks = sse(base)
            assert (
                chunks[-1]["error"]["message"]
                == "the guard proxy failed mid-stream: AttributeError"
            )
        else:
            r = httpx.post(f"{base}/chat/completions", json={"messages": HELLO}, timeout=30)
            assert r.status_code == 500
            assert r.json()["error"]["message"] == "the guard proxy failed: AttributeError"
        assert "not a verdict" not in r.text and BENIGN not in r.text
        assert metric(base, "internal_errors") == 1
    [row] = audit(tmp_path)
    assert row["decision"] == "error" and row["error"] == "proxy: AttributeError"


@pytest.mark.parametrize("stream", [False, True])
def test_lone_surrogate_in_the_request_is_a_400_with_an_audit_row(proxy, tmp_path, stream):
    base, upstream = proxy
    upstream.body, upstream.events = answer(), [chunk({"content": BENIGN})]
    raw = b'{"stream": %s, "messages": [{"role": "user", "content": "hi \\ud800 there"}]}' % (
        b"true" if stream else b"false"
    )
    r = httpx.post(
        f"{base}/chat/completions",
        content=raw,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert "Error" not in r.text  # no exception name or text
    [row] = audit(tmp_path)
    assert row["decision"] == "bad_request" and row["stream"] == int(stream)


# --- keys ---------------------------------------------------------------------------------------


def test_non_ascii_bearer_bytes_get_401_not_500(hostile, tmp_path):
    _, url = hostile
    app = create_guard_app(ScriptedGuard(), url, audit_db=tmp_path / "a.db", api_keys={"k1", "clé"})
    with running_server(app) as base:
        for header in [b"Bearer \xc3\xa9\xff", b"Bearer \xff", b"\xff\xfe", b"Bearer cl\xe9"]:
            r = httpx.get(f"{base}/models", headers={b"Authorization": header})
            assert r.status_code == 401, header
            assert r.json()["error"]["message"] == "missing or invalid API key"
        # A non-ASCII key works when sent as its UTF-8 bytes.
        assert (
            httpx.get(
                f"{base}/models", headers={b"Authorization": "Bearer clé".encode()}
            ).status_code
            == 200
        )


@pytest.mark.anyio
async def test_metrics_loopback_only_by_default(tmp_path):
    app = create_guard_app(ScriptedGuard(), "http://127.0.0.1:9/v1", audit_db=tmp_path / "a.db")
    for client, status in [
        (("203.0.113.7", 5000), 403),
        (("127.0.0.1", 5000), 200),
        (("::1", 5000), 200),
    ]:
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://guard") as http:
            r = await http.get("/metrics")
        assert r.status_code == status, client
    assert (
        "--metrics-key"
        in (await _get(app, ("203.0.113.7", 1), "/metrics")).json()["error"]["message"]
    )


@pytest.mark.anyio
async def test_metrics_key_is_required_from_everywhere_once_set(tmp_path):
    app = create_guard_app(
        ScriptedGuard(), "http://127.0.0.1:9/v1", audit_db=tmp_path / "a.db", metrics_key="m-key"
    )
    for host in ("203.0.113.7", "127.0.0.1"):
        for headers, status in [
            ({}, 401),
            ({"Authorization": "Bearer nope"}, 401),
            ({b"Authorization": b"Bearer \xc3\xa9\xff"}, 401),
            ({"Authorization": "Bearer m-key"}, 200),
        ]:
            r = await _get(app, (host, 1), "/metrics", headers)
            assert r.status_code == status, (host, headers)
    assert "cai_guard_requests_total 0" in r.text


async def _get(app, client, path, headers=None):
    transport = httpx.ASGITransport(app=app, client=client)
    async with httpx.AsyncClient(transport=transport, base_url="http://guard") as http:
        return await http.get(path, headers=headers)


# --- bounded classifier work ----------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_texts_longer_than_the_guard_checks_are_refused_unscored(hostile, tmp_path, stream):
    upstream, url = hostile
    long_answer = "calm sea " * 200  # 1,800 chars, over the 1,000 allowed below
    upstream.status, upstream.body = 200, answer(long_answer)
    upstream.events = [
        chunk({"content": long_answer[i : i + 100]}) for i in range(0, len(long_answer), 100)
    ]
    guard = ScriptedGuard(marker=None)
    app = create_guard_app(
        guard, url, audit_db=tmp_path / "a.db", holdback_chars=8, max_check_chars=1000
    )
    with running_server(app) as base:
        long_ask = [{"role": "user", "content": "x" * 1001}]
        r = httpx.post(
            f"{base}/chat/completions", json={"messages": long_ask, "stream": stream}, timeout=30
        )
        assert (
            r.status_code == 400 and "longer than this guard checks" in r.json()["error"]["message"]
        )
        if stream:
            shown, last, _ = stream_chat(base)
            assert last["finish_reason"] == "content_filter" and len(shown) <= 1000
        else:
            [choice] = httpx.post(
                f"{base}/chat/completions", json={"messages": HELLO}, timeout=30
            ).json()["choices"]
            assert (
                choice["finish_reason"] == "content_filter"
                and "calm sea" not in choice["message"]["content"]
            )
    assert all(len(t) <= 1000 for t in guard.outputs)  # never asked to score past the limit
    rows = audit(tmp_path)
    assert [r["decision"] for r in rows] == ["bad_request", "refused_output"]
    assert rows[1]["error"] == "output over 1000 characters: cut off unchecked"
