"""The OpenAI-compatible server in front of a tiny local model: shapes, logprobs, streaming,
errors, and the `cai serve` command's wiring."""

from __future__ import annotations

import json

import httpx
import pytest
from fastapi.testclient import TestClient
from faults import running_server

from constitutional.backends.base import Completion, GenerationRequest
from constitutional.serve import create_app
from constitutional.serve.app import Limits

HELLO = [{"role": "user", "content": "Say hello."}]
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny model, shared CPUs: threads only contend


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    from constitutional.backends.local import LocalBackend

    return LocalBackend(str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="module")
def client(backend):
    return TestClient(create_app(backend, model_name="tiny"))


def chat(client, **body):
    response = client.post("/v1/chat/completions", json={"messages": HELLO, **body})
    assert response.status_code == 200, response.text
    return response.json()


def test_models_and_health(client):
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["tiny"]
    assert client.get("/health").json() == {"status": "ok", "model": "tiny"}


def test_chat_completion_matches_backend_and_counts_usage(client, backend):
    body = chat(client, max_tokens=6, temperature=0, seed=1)
    [expected] = backend.generate([GenerationRequest(messages=HELLO, max_tokens=6, seed=1)])
    [choice] = body["choices"]
    assert body["object"] == "chat.completion" and body["model"] == "tiny"
    assert choice["message"] == {"role": "assistant", "content": expected.text}
    assert choice["finish_reason"] == expected.finish_reason
    assert body["usage"] == {
        "prompt_tokens": expected.prompt_tokens,
        "completion_tokens": expected.completion_tokens,
        "total_tokens": expected.prompt_tokens + expected.completion_tokens,
    }
    assert body["usage"]["prompt_tokens"] > 0 and 0 < body["usage"]["completion_tokens"] <= 6


def test_chat_n_samples_use_consecutive_seeds(client, backend):
    body = chat(client, max_tokens=8, temperature=1.0, seed=5, n=3)
    expected = backend.generate(
        [
            GenerationRequest(messages=HELLO, temperature=1.0, max_tokens=8, seed=s)
            for s in (5, 6, 7)
        ]
    )
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert [c["message"]["content"] for c in body["choices"]] == [e.text for e in expected]
    # The prompt is counted once, as OpenAI does, the completions all together.
    assert body["usage"]["prompt_tokens"] == expected[0].prompt_tokens
    assert body["usage"]["completion_tokens"] == sum(e.completion_tokens for e in expected)


def test_chat_logprobs_shape(client):
    body = chat(client, max_tokens=4, temperature=0, logprobs=True, top_logprobs=5)
    [choice] = body["choices"]
    content = choice["logprobs"]["content"]
    assert len(content) == body["usage"]["completion_tokens"]
    for entry in content:
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
        assert entry["logprob"] <= 0
        assert entry["bytes"] == list(entry["token"].encode())
        tops = [t["logprob"] for t in entry["top_logprobs"]]
        assert 1 <= len(tops) <= 5 and tops == sorted(tops, reverse=True)
        # Greedy decoding: the chosen token is the most likely one.
        assert entry["logprob"] == pytest.approx(tops[0], abs=1e-5)
    assert "".join(e["token"] for e in content).startswith(choice["message"]["content"])


def test_chat_logprobs_without_top(client):
    body = chat(client, max_tokens=3, temperature=0, logprobs=True)
    assert all(e["top_logprobs"] == [] for e in body["choices"][0]["logprobs"]["content"])
    assert chat(client, max_tokens=3)["choices"][0]["logprobs"] is None


def test_stop_string_is_cut(client):
    params = {"max_tokens": 12, "temperature": 1.0, "seed": 3}  # sampled: varied gibberish
    text = chat(client, **params)["choices"][0]["message"]["content"]
    stop = text[len(text) // 2 :][:2]  # a substring the answer is known to contain
    assert stop.strip()
    cut = chat(client, **params, stop=[stop, "never-there"])["choices"][0]
    assert cut["message"]["content"] == text[: text.find(stop)]
    assert cut["finish_reason"] == "stop"


def test_legacy_completions_with_logprobs(client, backend):
    response = client.post(
        "/v1/completions",
        json={"prompt": "Once upon", "max_tokens": 5, "temperature": 0, "logprobs": 3},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    [expected] = backend.generate([GenerationRequest(prompt="Once upon", max_tokens=5)])
    [choice] = body["choices"]
    assert body["object"] == "text_completion"
    assert choice["text"] == expected.text
    lp = choice["logprobs"]
    n = body["usage"]["completion_tokens"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == n
    assert all(x <= 0 for x in lp["token_logprobs"])
    for top in lp["top_logprobs"]:
        values = list(top.values())
        assert 1 <= len(values) <= 3 and values == sorted(values, reverse=True)
    assert lp["text_offset"][0] == 0


def test_legacy_completions_prompt_list(client):
    response = client.post("/v1/completions", json={"prompt": ["a", "b"], "max_tokens": 2, "n": 2})
    assert response.status_code == 200
    assert [c["index"] for c in response.json()["choices"]] == [0, 1, 2, 3]


def sse_events(response: httpx.Response) -> list[str]:
    """The `data:` payloads of a Server-Sent Events response, in order."""
    lines = response.text.split("\n\n")
    assert lines[-1] == ""  # every event ends with a blank line
    assert all(line.startswith("data: ") for line in lines[:-1])
    return [line[len("data: ") :] for line in lines[:-1]]


def test_streaming_over_real_http_equals_non_streamed(backend):
    request = {"messages": HELLO, "max_tokens": 12, "temperature": 0}
    with running_server(create_app(backend)) as base_url:
        plain = httpx.post(f"{base_url}/chat/completions", json=request, timeout=30).json()
        stream_body = {**request, "stream": True, "stream_options": {"include_usage": True}}
        with httpx.stream(
            "POST", f"{base_url}/chat/completions", json=stream_body, timeout=30
        ) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            r.read()
    events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    text = "".join(d.get("content", "") for d in deltas)
    expected = plain["choices"][0]["message"]["content"]
    assert text == expected
    assert len(chunks) >= 3  # role, at least one piece, finish (+ usage)
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == plain["choices"][0]["finish_reason"] and set(finishes[:-1]) == {None}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]


def test_streaming_legacy_completions(client):
    body = {"prompt": "Once upon", "max_tokens": 6, "temperature": 0}
    plain = client.post("/v1/completions", json=body).json()
    events = sse_events(client.post("/v1/completions", json={**body, "stream": True}))
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])
    assert text == plain["choices"][0]["text"]


@pytest.mark.parametrize(
    "body, param",
    [
        ({"messages": []}, "messages"),
        ({"messages": HELLO, "temperature": 3}, "temperature"),
        ({"messages": HELLO, "max_tokens": 0}, "max_tokens"),
        ({"messages": HELLO, "top_logprobs": 3}, None),  # needs logprobs: true
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
        ({"prompt": "hi"}, "messages"),  # a completions body sent to the chat endpoint
    ],
)
def test_bad_chat_request_is_400_in_openai_shape(client, body, param):
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if param:
        assert error["param"] == param


def test_bad_json_and_bad_completions_are_400(client):
    response = client.post(
        "/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and "error" in response.json()
    response = client.post("/v1/completions", json={"prompt": "x", "echo": True})
    assert response.status_code == 400 and "echo" in response.json()["error"]["message"]
    assert client.post("/v1/completions", json={"prompt": "x", "logprobs": 99}).status_code == 400


def test_unknown_route_is_404_in_openai_shape(client):
    response = client.get("/v1/nothing")
    assert response.status_code == 404 and "error" in response.json()


def test_backend_failure_is_500(backend):
    class Broken:
        name, model = "broken", "broken"

        def generate(self, requests, on_result=None):
            raise RuntimeError("out of memory")

    client = TestClient(create_app(Broken()), raise_server_exceptions=False)
    response = client.post("/v1/chat/completions", json={"messages": HELLO})
    assert response.status_code == 500
    # A fixed message: exception text may carry internals, so it goes to the log only.
    assert response.json()["error"] == {
        "message": "internal server error",
        "type": "server_error",
        "param": None,
        "code": None,
    }
    assert "memory" not in response.text


def test_cli_serve_builds_backend_and_runs_uvicorn(tiny_model_dir, monkeypatch):
    import uvicorn

    from constitutional.cli.serve import serve

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    serve(
        model=str(tiny_model_dir),
        host="127.0.0.1",
        port=8123,
        batch_size=2,
        max_tokens_cap=7,
        max_rows=3,
        max_body_bytes=5000,
        max_in_flight=9,
        shutdown_timeout=1.5,
    )
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8123
    assert seen["timeout_graceful_shutdown"] == 1.5
    assert seen["app"].state.limits == Limits(
        max_tokens=7, max_rows=3, max_body_bytes=5000, max_in_flight=9
    )
    models = TestClient(seen["app"]).get("/v1/models").json()
    assert models["data"][0]["id"] == str(tiny_model_dir)


# --- hardening: one client must not tie the server up (issue 23) ------------------------------


def error_of(response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and set(error) == {"message", "type", "param", "code"}
    return error


def test_max_tokens_above_the_cap_is_400(backend, client):
    body = {"prompt": "Once upon", "temperature": 0, "max_tokens": 1_000_000}
    error = error_of(client.post("/v1/completions", json=body), 400)
    assert error["param"] == "max_tokens" and str(backend.context_length) in error["message"]
    capped = TestClient(create_app(backend, limits=Limits(max_tokens=4)))
    assert (
        error_of(capped.post("/v1/completions", json={**body, "max_tokens": 5}), 400)["param"]
        == "max_tokens"
    )
    ok = capped.post("/v1/completions", json={**body, "max_tokens": 4})
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 4


def long_chat(backend, tokens: int) -> list[dict]:
    """A user message whose chat prompt is about `tokens` tokens long."""
    text = " hello" * tokens
    overhead = len(backend.prompt_ids([{"role": "user", "content": ""}]))
    text = " hello" * (tokens - overhead)
    return [{"role": "user", "content": text}]


def test_prompt_longer_than_the_context_is_400(backend, client):
    context = backend.context_length
    messages = long_chat(backend, context + 10)
    error = error_of(client.post("/v1/chat/completions", json={"messages": messages}), 400)
    assert error["param"] == "messages" and f"context is {context} tokens" in error["message"]
    # A prompt that fits, but not with the max_tokens asked for.
    fits = long_chat(backend, context - 5)
    n_prompt = len(backend.prompt_ids(fits))
    assert n_prompt < context
    body = {"messages": fits, "max_tokens": context - n_prompt + 1, "temperature": 0}
    assert error_of(client.post("/v1/chat/completions", json=body), 400)["param"] == "max_tokens"
    # Without max_tokens, the default (512) shrinks to the room the prompt leaves.
    body.pop("max_tokens")
    answer = client.post("/v1/chat/completions", json=body).json()
    assert answer["usage"]["prompt_tokens"] == n_prompt
    assert answer["usage"]["completion_tokens"] <= context - n_prompt


def test_body_over_the_cap_is_413_and_a_1mb_prompt_is_refused(backend, client):
    megabyte = [{"role": "user", "content": "a " * 500_000}]
    # Default cap (1 MiB): a 1 MB prompt is read, tokenised and refused as too long for the context.
    error = error_of(client.post("/v1/chat/completions", json={"messages": megabyte}), 400)
    assert error["param"] == "messages" and "longer than this model's context" in error["message"]
    small = TestClient(create_app(backend, limits=Limits(max_body_bytes=10_000)))
    error = error_of(small.post("/v1/chat/completions", json={"messages": megabyte}), 413)
    assert "10000 bytes" in error["message"]
    assert (
        small.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 2}).status_code
        == 200
    )


def test_the_length_precheck_never_refuses_a_prompt_that_fits(backend):
    """Text is refused untokenised only when it has more characters than `limit` tokens can
    cover; the densest text (the vocabulary's longest token, repeated) must still pass."""
    longest = max(backend.tokenizer.get_vocab(), key=len)
    dense = backend.tokenizer.convert_tokens_to_string([longest]) * 50
    ids = backend.prompt_ids(dense)
    assert len(ids) <= 60 and len(dense) > 50 * 40  # dense: many characters per token
    assert backend.prompt_ids(dense, limit=len(ids)) == ids
    assert backend.prompt_ids(dense + "x" * len(dense) * 2, limit=len(ids)) is None


def test_chunked_body_over_the_cap_is_413_on_a_real_server(backend):
    """Without Content-Length the body is counted as it arrives."""

    def chunks():
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(50):
            yield b"a" * 1000
        yield b'"}]}'

    with running_server(create_app(backend, limits=Limits(max_body_bytes=20_000))) as url:
        response = httpx.post(
            f"{url}/chat/completions",
            content=chunks(),
            headers={"content-type": "application/json"},
            timeout=30,
        )
    assert "content-length" not in response.request.headers
    error_of(response, 413)


def test_prompts_times_n_over_the_cap_is_400(backend, client):
    body = {"prompt": [f"prompt {i}" for i in range(32)], "n": 16, "max_tokens": 2}
    error = error_of(client.post("/v1/completions", json=body), 400)
    assert error["param"] == "n" and "16" in error["message"]
    assert (
        client.post(
            "/v1/completions", json={**body, "prompt": body["prompt"][:4], "n": 4}
        ).status_code
        == 200
    )
    five = TestClient(create_app(backend, limits=Limits(max_rows=5)))
    assert five.post("/v1/chat/completions", json={"messages": HELLO, "n": 6}).status_code == 400


def test_too_many_stop_sequences_is_400(client):
    body = {"messages": HELLO, "stop": ["a", "b", "c", "d", "e"]}
    assert error_of(client.post("/v1/chat/completions", json=body), 400)["param"] == "stop"


def keep_alive_pair(url: str, first: tuple[str, dict], second: tuple[str, dict]):
    """Send two requests on one HTTP/1.1 connection; the second must not find it reset."""
    import http.client

    host, port = url.removeprefix("http://").split("/")[0].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    answers = []
    sockets = []
    for path, body in (first, second):
        conn.request("POST", path, json.dumps(body), {"content-type": "application/json"})
        response = conn.getresponse()
        answers.append((response.status, json.loads(response.read())))
        sockets.append(conn.sock)
    conn.close()
    assert sockets[0] is not None and sockets[0] is sockets[1]  # the same connection served both
    return answers


def test_out_of_range_seed_is_400_and_the_connection_survives(backend):
    bad = {"messages": HELLO, "max_tokens": 2, "seed": 18446744073709551616}
    good = {"messages": HELLO, "max_tokens": 2, "seed": 2**63 - 1, "n": 2}  # seeds 2^63-1 and 2^63
    with running_server(create_app(backend)) as url:
        (status, body), (status2, body2) = keep_alive_pair(
            url, ("/v1/chat/completions", bad), ("/v1/chat/completions", good)
        )
    assert status == 400 and body["error"]["param"] == "seed"
    assert status2 == 200 and len(body2["choices"]) == 2


def test_a_crash_is_a_fixed_500_and_the_connection_survives():
    class Flaky:
        name, model = "flaky", "flaky"
        calls = 0

        def generate(self, requests, on_result=None):
            Flaky.calls += 1
            if Flaky.calls == 1:
                raise RuntimeError("secret internals at /srv/model")
            return [Completion("fine", "stop", 1, 1) for _ in requests]

    request = ("/v1/chat/completions", {"messages": HELLO})
    with running_server(create_app(Flaky())) as url:
        (status, body), (status2, body2) = keep_alive_pair(url, request, request)
    assert status == 500 and body["error"]["message"] == "internal server error"
    assert "secret" not in json.dumps(body)
    assert status2 == 200 and body2["choices"][0]["message"]["content"] == "fine"


@pytest.fixture
def slow_steps(monkeypatch):
    """Each decode step sleeps 20 ms (a long request takes long even on a fast machine), and the
    most rows seen decoding together is recorded."""
    import time

    from constitutional.backends import continuous

    original = continuous.ContinuousBatcher._step
    seen = {"max_rows": 0, "steps": 0}

    def step(self, on_finished):
        seen["max_rows"] = max(seen["max_rows"], sum(r is not None for r in self.rows))
        seen["steps"] += 1
        time.sleep(0.02)
        original(self, on_finished)

    monkeypatch.setattr(continuous.ContinuousBatcher, "_step", step)
    return seen


def wait_until(condition, timeout: float) -> float:
    """Seconds until `condition()` held; fails after `timeout`."""
    import time

    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, "condition not reached in time"
        time.sleep(0.02)
    return time.monotonic() - start


def test_short_request_is_answered_while_a_long_one_runs_and_a_gone_client_stops_its_rows(
    backend, slow_steps
):
    import threading
    import time

    app = create_app(backend)
    engine = app.state.engine
    long = {"prompt": "Once upon", "temperature": 0, "max_tokens": 2000}  # ~40 s of 20 ms steps
    outcome = {}

    def impatient_client(url):
        try:
            httpx.post(f"{url}/completions", json=long, timeout=3)
        except httpx.TimeoutException:
            outcome["gave_up"] = time.monotonic()

    with running_server(app) as url:
        thread = threading.Thread(target=impatient_client, args=(url,))
        thread.start()
        wait_until(lambda: slow_steps["steps"] > 5, timeout=10)
        start = time.monotonic()
        short = httpx.post(f"{url}/completions", json={**long, "max_tokens": 2}, timeout=10)
        assert short.status_code == 200 and short.json()["usage"]["completion_tokens"] == 2
        assert time.monotonic() - start < 2.5 and engine.busy()  # answered beside the long request
        thread.join()
        assert "gave_up" in outcome
        # The long request's rows stop soon after its client left, not 2000 steps later.
        wait_until(lambda: not engine.busy(), timeout=3)
        steps = slow_steps["steps"]
        time.sleep(0.2)
        assert slow_steps["steps"] == steps < 1000


def test_concurrent_requests_share_the_batch_and_keep_their_answers(backend, slow_steps):
    from concurrent.futures import ThreadPoolExecutor

    bodies = [
        {"prompt": f"Story {i}:", "temperature": 1.0, "seed": i, "max_tokens": 12} for i in range(8)
    ]
    with running_server(create_app(backend)) as url:

        def send(body):
            response = httpx.post(f"{url}/completions", json=body, timeout=60)
            assert response.status_code == 200, response.text
            return response.json()["choices"][0]["text"]

        with ThreadPoolExecutor(8) as pool:
            together = list(pool.map(send, bodies))
        assert slow_steps["max_rows"] > 1  # decoded in one batch, not one after another
        slow_steps["max_rows"] = 0
        alone = [send(body) for body in bodies]
        assert slow_steps["max_rows"] == 1
    assert together == alone
    assert len(set(alone)) > 1


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_sigterm_stops_the_server_within_seconds_during_a_long_request(tiny_model_dir):
    import os
    import signal
    import subprocess
    import threading
    import time

    from helpers import CAI

    port = free_port()
    env = {**os.environ, "CAI_THREADS": "1"}
    proc = subprocess.Popen(
        [
            *CAI,
            "serve",
            "--model",
            str(tiny_model_dir),
            "--port",
            str(port),
            "--shutdown-timeout",
            "1",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            assert proc.poll() is None, "the server exited"
            try:
                return httpx.get(f"{url}/health", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, timeout=120)
        # 16 rows to the end of the context: far longer than the test waits.
        long = {"prompt": ["Once upon"] * 4, "n": 4, "temperature": 0, "max_tokens": 2000}
        answered = []
        client = threading.Thread(
            target=lambda: answered.append(_post_quietly(f"{url}/v1/completions", long))
        )
        client.start()
        time.sleep(1.0)
        assert not answered, "the long request ended before SIGTERM: nothing was tested"
        proc.send_signal(signal.SIGTERM)
        took = wait_until(lambda: proc.poll() is not None, timeout=10)
        assert took < 6
        client.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _post_quietly(url: str, body: dict) -> int | None:
    try:
        return httpx.post(url, json=body, timeout=60).status_code
    except httpx.TransportError:
        return None


def test_requests_beyond_max_in_flight_are_503(backend, slow_steps):
    import threading

    app = create_app(backend, limits=Limits(max_in_flight=1))
    long = {"prompt": "Once upon", "temperature": 0, "max_tokens": 60}
    with running_server(app) as url:
        first = threading.Thread(
            target=lambda: httpx.post(f"{url}/completions", json=long, timeout=30)
        )
        first.start()
        wait_until(lambda: slow_steps["steps"] > 2, timeout=10)
        busy = httpx.post(f"{url}/completions", json={**long, "max_tokens": 2}, timeout=10)
        first.join()
        after = httpx.post(f"{url}/completions", json={**long, "max_tokens": 2}, timeout=10)
    assert error_of(busy, 503)["type"] == "server_error" and busy.headers["retry-after"] == "1"
    assert after.status_code == 200


def test_a_failed_batch_answers_500_and_the_engine_serves_on(backend, monkeypatch):
    from constitutional.backends import continuous

    original, calls = continuous.ContinuousBatcher._step, []

    def failing_once(self, on_finished):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("kernel exploded")
        original(self, on_finished)

    monkeypatch.setattr(continuous.ContinuousBatcher, "_step", failing_once)
    client = TestClient(create_app(backend))
    body = {"prompt": "Once upon", "max_tokens": 3, "temperature": 0}
    error = error_of(client.post("/v1/completions", json=body), 500)
    assert error["message"] == "internal server error" and "exploded" not in json.dumps(error)
    assert client.post("/v1/completions", json=body).json()["usage"]["completion_tokens"] == 3


def test_after_shutdown_requests_get_503(backend):
    app = create_app(backend)
    with TestClient(app) as client:  # runs the lifespan: leaving it stops the engine
        assert (
            client.post("/v1/completions", json={"prompt": "a", "max_tokens": 1}).status_code == 200
        )
    response = TestClient(app).post("/v1/completions", json={"prompt": "a", "max_tokens": 1})
    assert error_of(response, 503)["message"] == "the server is shutting down"
