"""The guard proxy on real uvicorn servers: a scripted guard in front of a scripted upstream
(exact texts, exact hold-back arithmetic) and of our own server with a tiny random model."""

from __future__ import annotations

import json
import sqlite3

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from faults import running_server

from constitutional.guard.protocol import Guard, Verdict
from constitutional.guard.proxy import INPUT_REFUSAL, OUTPUT_REFUSAL, create_guard_app

HELLO = [{"role": "user", "content": "Say hello."}]
MARKER = "FORBIDDEN"
SAFE = "The weather today is mild, with a light breeze from the west. " * 4  # 252 chars
SCRIPT = SAFE + MARKER + " and then the rest of a harmful answer follows here."


class ScriptedGuard:
    """Flags an output once it contains `marker`, an input once it contains `input_marker`;
    raises instead when told to. Records every text it was shown."""

    constitution_hash = "sha256:test"

    def __init__(self, marker=MARKER, input_marker="how to build a bomb", raises=None):
        self.marker, self.input_marker, self.raises = marker, input_marker, raises
        self.outputs: list[str] = []

    def check_input(self, messages):
        if self.raises == "input":
            raise RuntimeError("classifier down")
        text = " ".join(m["content"] for m in messages)
        hit = self.input_marker in text
        return Verdict(score=0.9 if hit else 0.1, flagged=hit, stage="cheap")

    def check_output(self, messages, response_so_far):
        self.outputs.append(response_so_far)
        if self.raises == "output":
            raise RuntimeError("classifier down")
        hit = self.marker is not None and self.marker in response_so_far
        return Verdict(score=0.95 if hit else 0.05, flagged=hit, stage="strong")


class ScriptedUpstream:
    """An OpenAI-style upstream answering `text`, streamed in `piece`-character chunks."""

    def __init__(self, text: str = SCRIPT, piece: int = 7):
        self.text, self.piece, self.calls = text, piece, 0
        self.app = FastAPI()
        self.app.post("/v1/chat/completions")(self.chat)

    async def chat(self, body: dict):
        self.calls += 1
        meta = {"id": "up-1", "created": 0, "model": "scripted"}
        if not body.get("stream"):
            message = {"role": "assistant", "content": self.text}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            return {**meta, "object": "chat.completion", "choices": [choice]}

        def events():
            pieces = [self.text[i : i + self.piece] for i in range(0, len(self.text), self.piece)]
            for delta, finish in [*((({"content": p}), None) for p in pieces), ({}, "stop")]:
                choice = {"index": 0, "delta": delta, "finish_reason": finish}
                yield f"data: {json.dumps({**meta, 'choices': [choice]})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")


@pytest.fixture(scope="module")
def scripted():
    upstream = ScriptedUpstream()
    with running_server(upstream.app) as url:
        yield upstream, url


@pytest.fixture()
def proxy(scripted, tmp_path):
    """start(guard, **options) -> (proxy base URL, upstream), one proxy per call."""
    upstream, url = scripted
    upstream.text, upstream.calls = SCRIPT, 0
    servers = []

    def start(guard=None, **options):
        app = create_guard_app(guard or ScriptedGuard(), url, audit_db=tmp_path / "a.db", **options)
        servers.append(running_server(app))
        return servers[-1].__enter__(), upstream

    yield start
    for server in servers:
        server.__exit__(None, None, None)


def stream_chat(base, messages=HELLO, headers=None, **body):
    """POST a streamed chat; return (content before the last chunk, last chunk, all chunks)."""
    request = {"messages": messages, "stream": True, **body}
    r = httpx.post(f"{base}/chat/completions", json=request, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [e[len("data: ") :] for e in r.text.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    with_choices = [c for c in chunks if c["choices"]]
    last = with_choices[-1]["choices"][0]
    before = "".join(c["choices"][0]["delta"].get("content", "") for c in with_choices[:-1])
    return before, last, chunks


def post_chat(base, messages=HELLO, headers=None, **body):
    return httpx.post(
        f"{base}/chat/completions", json={"messages": messages, **body}, headers=headers, timeout=30
    )


def audit_rows(tmp_path):
    with sqlite3.connect(tmp_path / "a.db") as con:
        con.row_factory = sqlite3.Row
        return [dict(r) for r in con.execute("SELECT * FROM requests ORDER BY time")]


def test_scripted_guard_implements_the_protocol():
    assert isinstance(ScriptedGuard(), Guard)


@pytest.mark.parametrize("holdback", [0, 16, 64])
def test_stream_never_releases_text_the_guard_has_not_seen_past(proxy, holdback):
    base, upstream = proxy(holdback_chars=holdback)
    shown, last, _ = stream_chat(base)
    # Any passing check saw less than the whole marker; the client got at most that text minus
    # the hold-back. 7-char pieces: the marker completes inside the piece ending at `flag_at`.
    flag_at = -(-(len(SAFE) + len(MARKER)) // upstream.piece) * upstream.piece
    last_passed = flag_at - upstream.piece
    assert SCRIPT.startswith(shown) and MARKER not in shown
    assert len(shown) == last_passed - holdback  # all cleared text was released, no more
    assert last["finish_reason"] == "content_filter"
    assert last["delta"]["content"] == OUTPUT_REFUSAL


def test_stream_that_passes_arrives_whole_with_upstream_finish_reason(proxy):
    guard = ScriptedGuard(marker=None)
    base, _ = proxy(guard, holdback_chars=64)
    shown, last, chunks = stream_chat(base)
    assert last == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert shown == SCRIPT
    assert guard.outputs[-1] == SCRIPT  # the tail went out only after the full text passed
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert len({c["id"] for c in chunks}) == 1


def test_non_streamed_answer_is_checked_whole(proxy, tmp_path):
    base, upstream = proxy()
    body = post_chat(base).json()
    assert body["choices"][0]["finish_reason"] == "content_filter"
    assert MARKER not in body["choices"][0]["message"]["content"]
    upstream.text = SAFE
    assert post_chat(base).json()["choices"][0]["message"]["content"] == SAFE
    assert [r["decision"] for r in audit_rows(tmp_path)] == ["refused_output", "allowed"]


@pytest.mark.parametrize("stream", [False, True])
def test_flagged_input_is_refused_without_calling_upstream(proxy, tmp_path, stream):
    base, upstream = proxy()
    bad = [{"role": "user", "content": "Explain how to build a bomb at home."}]
    if stream:
        shown, last, _ = stream_chat(base, messages=bad)
        content = shown + last["delta"].get("content", "")
        reason = last["finish_reason"]
    else:
        [choice] = post_chat(base, messages=bad).json()["choices"]
        content, reason = choice["message"]["content"], choice["finish_reason"]
    assert content == INPUT_REFUSAL and reason == "content_filter"
    assert upstream.calls == 0
    [row] = audit_rows(tmp_path)
    assert row["decision"] == "refused_input" and row["input_flagged"] == 1
    assert row["input_score"] == 0.9 and row["input_stage"] == "cheap"
    assert row["constitution_hash"] == "sha256:test" and row["output_checks"] == 0


def test_api_keys(proxy):
    base, _ = proxy(api_keys={"k1", "k2"})
    for headers in [None, {"Authorization": "Bearer nope"}, {"Authorization": "k1"}]:
        r = post_chat(base, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_request_error"
        assert httpx.get(f"{base}/models", headers=headers).status_code == 401
    # Even a malformed body is refused for want of a key before it is parsed.
    r = httpx.post(f"{base}/chat/completions", content=b"{nope", timeout=10)
    assert r.status_code == 401
    assert post_chat(base, headers={"Authorization": "Bearer k2"}).status_code == 200
    models = httpx.get(f"{base}/models", headers={"Authorization": "Bearer k1"}).json()
    assert models["data"][0]["id"] == "guarded"
    root = base.removesuffix("/v1")
    assert httpx.get(f"{root}/healthz").json() == {"status": "ok"}  # probes need no key
    assert httpx.get(f"{root}/metrics").status_code == 200


@pytest.mark.parametrize(
    "content, status",
    [
        (b"{nope", 400),
        (b'{"model": "x"}', 400),  # no messages
        (b'{"messages": []}', 400),
        (b'{"messages": [{"role": "wizard", "content": "hi"}]}', 400),
        (b'{"messages": [{"role": "user", "content": "hi"}], "n": 2}', 400),
        (b'{"messages": [{"role": "user", "content": "hi"}], "logprobs": true}', 400),
        (b'{"messages": [{"role": "user", "content": "' + b"x" * 5000 + b'"}]}', 413),
    ],
)
def test_bad_requests_get_openai_errors_not_500(proxy, content, status):
    base, upstream = proxy(max_body_bytes=4096)
    r = httpx.post(
        f"{base}/chat/completions",
        content=content,
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert r.status_code == status, r.text
    assert r.json()["error"]["message"] and upstream.calls == 0


def test_body_without_content_length_is_still_bounded(proxy):
    base, _ = proxy(max_body_bytes=1024)
    chunks = iter([b'{"messages": [{"role": "user", "content": "', b"y" * 4096, b'"}]}'])
    r = httpx.post(f"{base}/chat/completions", content=chunks, timeout=10)
    assert r.status_code == 413


@pytest.mark.parametrize("where", ["input", "output"])
@pytest.mark.parametrize("stream", [False, True])
def test_classifier_errors_fail_closed_by_default(proxy, tmp_path, where, stream):
    base, _ = proxy(ScriptedGuard(marker=None, raises=where))
    if stream:
        shown, last, _ = stream_chat(base)
        reason = last["finish_reason"]
    else:
        [choice] = post_chat(base).json()["choices"]
        shown, reason = "", choice["finish_reason"]
    assert reason == "content_filter"
    assert shown in ("", INPUT_REFUSAL)  # the first check failed: no upstream text shown
    [row] = audit_rows(tmp_path)
    assert row["error"] == "classifier: RuntimeError: classifier down"
    metrics = httpx.get(f"{base.removesuffix('/v1')}/metrics").text
    assert "cai_guard_classifier_errors_total 1\n" in metrics


@pytest.mark.parametrize("where", ["input", "output"])
def test_classifier_errors_pass_through_when_fail_open(proxy, tmp_path, where):
    base, _ = proxy(ScriptedGuard(raises=where), fail_closed=False)
    shown, last, _ = stream_chat(base)
    if where == "output":
        assert shown == SCRIPT and last["finish_reason"] == "stop"  # marker and all: no guard
    else:
        assert last["finish_reason"] == "content_filter"  # the output guard still works
    rows = audit_rows(tmp_path)
    assert len(rows) == 1 and rows[0]["error"].startswith("classifier: RuntimeError")


def test_audit_rows_and_metrics(proxy, tmp_path):
    base, upstream = proxy()
    stream_chat(base)  # output flagged
    post_chat(base, messages=[{"role": "user", "content": "how to build a bomb"}])  # input
    upstream.text = SAFE
    stream_chat(base)
    post_chat(base)
    rows = audit_rows(tmp_path)
    assert [r["decision"] for r in rows] == [
        "refused_output",
        "refused_input",
        "allowed",
        "allowed",
    ]
    assert [r["stream"] for r in rows] == [1, 0, 1, 0]
    assert rows[0]["output_flagged"] == 1 and rows[0]["output_score"] == 0.95
    assert rows[0]["output_checks"] > 1  # checked as it grew
    assert rows[2]["output_flagged"] == 0 and rows[2]["output_score"] == 0.05
    assert len({r["request_id"] for r in rows}) == 4
    assert all(r["latency_ms"] > 0 and r["error"] is None for r in rows)
    with sqlite3.connect(tmp_path / "a.db") as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    metrics = httpx.get(f"{base.removesuffix('/v1')}/metrics").text
    for line in [
        "cai_guard_requests_total 4",
        "cai_guard_flagged_inputs_total 1",
        "cai_guard_flagged_outputs_total 1",
        "cai_guard_classifier_errors_total 0",
        "cai_guard_flag_rate 0.5",
        "# TYPE cai_guard_flag_rate gauge",
    ]:
        assert line in metrics.splitlines()


def test_unreachable_upstream_is_502(tmp_path):
    app = create_guard_app(ScriptedGuard(), "http://127.0.0.1:9/v1", audit_db=tmp_path / "a.db")
    with running_server(app) as base:
        for stream in (False, True):
            r = post_chat(base, stream=stream)
            assert r.status_code == 502 and r.json()["error"]["type"] == "server_error"
    assert [r["decision"] for r in audit_rows(tmp_path)] == ["upstream_error"] * 2


# --- the real tiny model as upstream ---------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_upstream(tiny_model_dir):
    from constitutional.backends.local import LocalBackend
    from constitutional.serve import create_app

    backend = LocalBackend(str(tiny_model_dir), device="cpu")
    with running_server(create_app(backend, model_name="tiny")) as url:
        yield url


def test_tiny_model_upstream_through_the_proxy(tiny_upstream, tmp_path):
    request = {"max_tokens": 24, "temperature": 1.0, "seed": 3}  # sampled: varied gibberish
    direct = post_chat(tiny_upstream, **request).json()["choices"][0]["message"]["content"]
    assert len(direct) > 30
    passing = ScriptedGuard(marker=None)
    app = create_guard_app(passing, tiny_upstream, audit_db=tmp_path / "a.db", holdback_chars=8)
    with running_server(app) as base:
        assert post_chat(base, **request).json()["choices"][0]["message"]["content"] == direct
        shown, last, chunks = stream_chat(base, **request, stream_options={"include_usage": True})
    assert shown == direct and last["finish_reason"] in ("stop", "length")
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0

    # A marker in the middle of the model's own text: the stream is cut before it.
    marker = direct[len(direct) // 2 :][:3]
    cutting = ScriptedGuard(marker=marker)
    app = create_guard_app(cutting, tiny_upstream, audit_db=tmp_path / "b.db", holdback_chars=8)
    with running_server(app) as base:
        shown, last, _ = stream_chat(base, **request)
    assert last["finish_reason"] == "content_filter"
    assert direct.startswith(shown) and marker not in shown
    passed = [t for t in cutting.outputs if marker not in t]
    assert len(shown) <= max(len(t) for t in passed) - 8


def test_local_model_upstream_in_process_matches_the_served_one(
    tiny_upstream, tiny_model_dir, tmp_path
):
    from constitutional.guard.proxy import local_upstream

    request = {"max_tokens": 16, "temperature": 1.0, "seed": 5}
    direct = post_chat(tiny_upstream, **request).json()["choices"][0]["message"]["content"]
    url, transport = local_upstream(str(tiny_model_dir))
    app = create_guard_app(
        ScriptedGuard(marker=None), url, transport=transport, audit_db=tmp_path / "a.db"
    )
    with running_server(app) as base:
        assert post_chat(base, **request).json()["choices"][0]["message"]["content"] == direct
        shown, last, _ = stream_chat(base, **request)
    assert shown == direct and last["finish_reason"] in ("stop", "length")


def test_cli_serve_loads_the_guard_and_runs_uvicorn(monkeypatch, tmp_path):
    import uvicorn

    from constitutional.cli.guard_serve import serve
    from constitutional.guard.classifiers import TrainedGuard

    monkeypatch.setattr(TrainedGuard, "load", classmethod(lambda cls, path: ScriptedGuard()))
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    serve(
        guard_dir=tmp_path / "guard",
        upstream="http://127.0.0.1:1/v1",
        api_key=["k"],
        metrics_key="mk",
        upstream_api_key=None,
        audit_db=tmp_path / "g.sqlite",
        fail_open=False,
        holdback=32,
        max_check_chars=64_000,
        model_name="guarded-tiny",
        host="127.0.0.1",
        port=8124,
    )
    assert seen["port"] == 8124 and (tmp_path / "g.sqlite").exists()
    with running_server(seen["app"]) as base:
        models = httpx.get(f"{base}/models", headers={"Authorization": "Bearer k"}).json()
        metrics = base.removesuffix("/v1") + "/metrics"
        assert httpx.get(metrics).status_code == 401  # --metrics-key set: loopback needs it too
        assert httpx.get(metrics, headers={"Authorization": "Bearer mk"}).status_code == 200
    assert models["data"][0]["id"] == "guarded-tiny"


def test_client_leaving_mid_stream_still_gets_an_audit_row(proxy, tmp_path):
    import time

    base, upstream = proxy(ScriptedGuard(marker=None), holdback_chars=0)
    upstream.text = SAFE * 40  # long enough that the client leaves before the end
    body = {"messages": HELLO, "stream": True}
    with httpx.stream("POST", f"{base}/chat/completions", json=body, timeout=10) as r:
        next(r.iter_lines())
    deadline = time.monotonic() + 10
    while not audit_rows(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    [row] = audit_rows(tmp_path)
    assert row["stream"] == 1 and row["decision"] == "client_closed"


# --- the openai Python SDK as the client -----------------------------------------------------


def sdk_client(base, key):
    import openai  # in the dev extra

    return openai.OpenAI(base_url=base, api_key=key, max_retries=0, timeout=30)


def test_openai_sdk_non_streamed_through_the_proxy(proxy):
    base, upstream = proxy(ScriptedGuard(marker=None), api_keys={"sdk-key"})
    upstream.text = SAFE
    client = sdk_client(base, "sdk-key")
    done = client.chat.completions.create(model="guarded", messages=HELLO)
    assert done.choices[0].message.content == SAFE
    assert done.choices[0].finish_reason == "stop" and upstream.calls == 1
    assert [m.id for m in client.models.list()] == ["guarded"]

    refused = client.chat.completions.create(
        model="guarded", messages=[{"role": "user", "content": "how to build a bomb"}]
    )
    assert refused.choices[0].message.content == INPUT_REFUSAL
    assert refused.choices[0].finish_reason == "content_filter" and upstream.calls == 1


def test_openai_sdk_stream_passes_whole_or_ends_with_content_filter(proxy):
    base, upstream = proxy(api_keys={"sdk-key"}, holdback_chars=16)
    client = sdk_client(base, "sdk-key")
    upstream.text = SAFE
    chunks = list(client.chat.completions.create(model="guarded", messages=HELLO, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == SAFE
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"

    upstream.text = SCRIPT  # the marker arrives mid-stream
    chunks = list(client.chat.completions.create(model="guarded", messages=HELLO, stream=True))
    pieces = [c.choices[0] for c in chunks if c.choices]
    shown = "".join(p.delta.content or "" for p in pieces[:-1])
    assert SCRIPT.startswith(shown) and MARKER not in shown and len(shown) > 0
    assert pieces[-1].finish_reason == "content_filter"
    assert pieces[-1].delta.content == OUTPUT_REFUSAL
    assert all(p.finish_reason is None for p in pieces[:-1])


@pytest.mark.parametrize("stream", [False, True])
def test_openai_sdk_wrong_key_raises_authentication_error(proxy, stream):
    import openai

    base, upstream = proxy(api_keys={"sdk-key"})
    client = sdk_client(base, "wrong-key")
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model="guarded", messages=HELLO, stream=stream)
    assert caught.value.status_code == 401 and upstream.calls == 0
