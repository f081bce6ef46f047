"""The OpenAI-compatible server in front of a tiny local model: shapes, logprobs, streaming,
errors, and the `cai serve` command's wiring."""

from __future__ import annotations

import json

import httpx
import pytest
from fastapi.testclient import TestClient
from faults import running_server

from constitutional.backends.base import GenerationRequest
from constitutional.serve import create_app

HELLO = [{"role": "user", "content": "Say hello."}]


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
    assert response.json()["error"] == {
        "message": "RuntimeError: out of memory",
        "type": "server_error",
        "param": None,
        "code": None,
    }


def test_cli_serve_builds_backend_and_runs_uvicorn(tiny_model_dir, monkeypatch):
    import uvicorn

    from constitutional.cli.serve import serve

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    serve(model=str(tiny_model_dir), host="127.0.0.1", port=8123, batch_size=2)
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8123
    models = TestClient(seen["app"]).get("/v1/models").json()
    assert models["data"][0]["id"] == str(tiny_model_dir)
