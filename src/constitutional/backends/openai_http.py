"""The `openai` backend: any OpenAI-compatible server (vLLM, llama.cpp, Ollama, OpenAI) over httpx.

Requests run concurrently (bounded by a semaphore) on an asyncio loop inside the synchronous
`generate`. Transient failures are retried with exponential backoff and jitter: HTTP 408, 409,
429 and 5xx, timeouts, dropped connections, and 200 responses whose body is not the JSON we
expect. Other 4xx answers mean the request itself is wrong, so they fail at once. Every attempt
is bounded by `timeout` seconds in total, so a call never hangs.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import random
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from constitutional.backends.base import (
    Completion,
    GenerationRequest,
    OnResult,
    Prompt,
    TokenLogprob,
)
from constitutional.errors import BackendError

DEFAULT_BASE_URL = "https://api.openai.com/v1"
CHOICE_TOP_LOGPROBS = 20  # the most OpenAI's chat API returns; vLLM's default limit too
RETRY_STATUSES = frozenset({408, 409, 429})  # plus every 5xx


class _Retryable(Exception):
    """One attempt failed in a way worth retrying; `reason` is a one-line description."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason, self.retry_after = reason, retry_after


class OpenAIBackend:
    """A model behind an OpenAI-compatible HTTP API.

    Args:
        model: the model id the server knows (e.g. "gpt-4o-mini", "Qwen/Qwen2.5-7B-Instruct").
        base_url: API root including /v1; default `$OPENAI_BASE_URL`, else OpenAI's.
        api_key: bearer token; default `$OPENAI_API_KEY` (local servers usually need none).
        concurrency: requests in flight at once.
        timeout: seconds one attempt may take in total (connect, send, wait, read).
        max_retries: retries after the first attempt, so at most max_retries + 1 attempts.
        backoff_base: delay before the first retry; it doubles each retry (with jitter).
        backoff_max: cap on any delay, including one the server asks for with Retry-After.
    """

    name = "openai"

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        concurrency: int = 8,
        timeout: float = 60.0,
        max_retries: int = 5,
        backoff_base: float = 0.5,
        backoff_max: float = 20.0,
    ):
        if concurrency < 1 or max_retries < 0:
            raise ValueError("need concurrency >= 1 and max_retries >= 0")
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip(
            "/"
        )
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        # Jitter only spreads retries out; a fixed seed keeps runs reproducible to debug.
        self._rng = random.Random(0)

    def fingerprint(self) -> str:
        return f"openai:{self.base_url}:{self.model}"

    # --- generate ---------------------------------------------------------------------------

    def generate(
        self, requests: Sequence[GenerationRequest], on_result: OnResult | None = None
    ) -> list[Completion]:
        """Complete every request concurrently; results come back in request order.

        Raises:
            BackendError: a request failed for good (a 4xx, or retries exhausted).
        """
        return _run_sync(self._generate_all(list(requests), on_result))

    async def _generate_all(
        self, requests: list[GenerationRequest], on_result: OnResult | None
    ) -> list[Completion]:
        semaphore = asyncio.Semaphore(self.concurrency)
        limits = httpx.Limits(max_connections=self.concurrency)
        async with httpx.AsyncClient(
            headers=self._headers(), limits=limits, timeout=self.timeout
        ) as client:

            async def one(i: int, request: GenerationRequest) -> Completion:
                async with semaphore:
                    completion = await self._complete(client, request)
                if on_result:
                    on_result(i, completion)
                return completion

            tasks = [asyncio.create_task(one(i, r)) for i, r in enumerate(requests)]
            try:
                return list(await asyncio.gather(*tasks))
            except BaseException:
                # One request failed for good: stop the others rather than let them run on.
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    async def _complete(self, client: httpx.AsyncClient, request: GenerationRequest) -> Completion:
        if request.messages is not None:
            url, parse = f"{self.base_url}/chat/completions", _parse_chat
        else:
            url, parse = f"{self.base_url}/completions", _parse_text
        return await self._post(client, url, self._payload(request), parse)

    def _payload(self, request: GenerationRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "max_tokens": request.max_tokens,
            "seed": request.seed,
        }
        if request.stop:
            body["stop"] = list(request.stop)
        if request.min_tokens:  # vLLM's extension; sent only when asked for
            body["min_tokens"] = request.min_tokens
        if request.messages is not None:
            body["messages"] = request.messages
            if request.logprobs is not None:
                body["logprobs"] = True
                body["top_logprobs"] = request.logprobs
        else:
            body["prompt"] = request.prompt
            if request.logprobs is not None:
                body["logprobs"] = request.logprobs
        return body

    # --- one POST with retries ----------------------------------------------------------------

    async def _post(
        self, client: httpx.AsyncClient, url: str, payload: dict[str, Any], parse
    ) -> Completion:
        """POST until a parsable answer, a permanent error, or retries run out."""
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            try:
                return await self._attempt(client, url, payload, parse)
            except _Retryable as e:
                if attempt + 1 == attempts:
                    tries = f"{attempts} attempt" + ("s" if attempts > 1 else "")
                    raise BackendError(
                        f"POST {url} failed after {tries}; last error: {e.reason}"
                    ) from None
                await asyncio.sleep(self._delay(attempt, e.retry_after))
        raise AssertionError("unreachable")

    async def _attempt(
        self, client: httpx.AsyncClient, url: str, payload: dict[str, Any], parse
    ) -> Completion:
        try:
            # httpx's timeout bounds each read; this bounds the whole attempt (slow trickles too).
            async with asyncio.timeout(self.timeout):
                response = await client.post(url, json=payload)
        except (TimeoutError, httpx.TimeoutException):
            raise _Retryable(f"timed out after {self.timeout:g}s") from None
        except httpx.TransportError as e:
            raise _Retryable(
                f"{type(e).__name__}: {_one_line(str(e)) or 'connection failed'}"
            ) from None
        status = response.status_code
        if status in RETRY_STATUSES or status >= 500:
            reason = f"HTTP {status}: {_error_message(response)}"
            raise _Retryable(reason, _retry_after(response))
        if status >= 300:
            raise BackendError(f"POST {url} failed: HTTP {status}: {_error_message(response)}")
        try:
            return parse(response.json())
        except KeyError as e:
            raise _Retryable(f"malformed response (HTTP {status}): missing field {e}") from None
        except (ValueError, IndexError, TypeError) as e:
            raise _Retryable(f"malformed response (HTTP {status}): {_one_line(str(e))}") from None

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before retry number attempt+1: the server's wish, else backoff.

        Backoff doubles from `backoff_base` with "equal jitter" (half fixed, half random), so
        concurrent clients spread out yet never retry instantly.
        """
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.backoff_max)
        delay = min(self.backoff_base * 2**attempt, self.backoff_max)
        return delay / 2 + self._rng.uniform(0, delay / 2)

    # --- choice_logprobs ----------------------------------------------------------------------

    def choice_logprobs(
        self, prompts: Sequence[Prompt], choices: Sequence[str]
    ) -> list[list[float]]:
        """Log-prob of each choice's first token as the next token after each prompt.

        One request per prompt (max_tokens=1, temperature 0) asks for the top 20 next tokens. A
        choice matches a top token whose text equals the choice after stripping whitespace (" A"
        and "A" both match "A"; if several match, the highest wins). So choices should be single
        tokens, as judges' "A"/"B" are. A choice absent from the top 20 gets the lowest returned
        log-prob: an upper bound on its true value, which is all the server tells us.

        Raises:
            BackendError: the server returns no logprobs (they are required here).
        """
        return self.choice_logprobs_with_usage(prompts, choices)[0]

    def choice_logprobs_with_usage(
        self, prompts: Sequence[Prompt], choices: Sequence[str]
    ) -> tuple[list[list[float]], list[int]]:
        """`choice_logprobs`, and each request's `usage.prompt_tokens` as the server reports it
        (0 when the server leaves usage out: we do not guess its tokenizer)."""
        completions = self.generate([_probe(p) for p in prompts])
        rows = [self._match_choices(c, choices) for c in completions]
        return rows, [c.prompt_tokens for c in completions]

    def _match_choices(self, completion: Completion, choices: Sequence[str]) -> list[float]:
        if not completion.logprobs or not completion.logprobs[0].top:
            raise BackendError(
                f"the server at {self.base_url} returned no logprobs/top_logprobs; choice_logprobs "
                "(used by RL-CAI --mode logprob labelling and by judges) needs a server that "
                "returns them"
            )
        top = completion.logprobs[0].top
        floor = min(top.values())
        row = []
        for choice in choices:
            matches = [lp for token, lp in top.items() if token.strip() == choice.strip()]
            row.append(max(matches) if matches else floor)
        return row


# --- helpers ------------------------------------------------------------------------------------


def _probe(prompt: Prompt) -> GenerationRequest:
    """A one-token greedy request asking for the top next tokens after `prompt`."""
    kind = {"prompt": prompt} if isinstance(prompt, str) else {"messages": list(prompt)}
    return GenerationRequest(**kind, temperature=0.0, max_tokens=1, logprobs=CHOICE_TOP_LOGPROBS)


def _run_sync(coro):
    """Run a coroutine to completion from synchronous code, even inside a running event loop
    (a notebook, an async server): then it runs on a fresh loop in a helper thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="openai-backend") as pool:
        return pool.submit(asyncio.run, coro).result()  # re-raises its exception here


def _finish_reason(value: Any) -> str:
    return "length" if value == "length" else "stop"


def _usage(body: dict[str, Any]) -> tuple[int, int]:
    """(prompt, completion) tokens; 0 when a server leaves usage out (it is bookkeeping only)."""
    usage = body.get("usage") or {}
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


def _parse_chat(body: dict[str, Any]) -> Completion:
    choice = body["choices"][0]
    text = choice["message"]["content"] or ""  # null content (e.g. a refusal) is empty text
    logprobs = None
    if choice.get("logprobs") and choice["logprobs"].get("content") is not None:
        logprobs = [
            TokenLogprob(
                t["token"],
                float(t["logprob"]),
                _best_by_text((a["token"], a["logprob"]) for a in t.get("top_logprobs") or []),
            )
            for t in choice["logprobs"]["content"]
        ]
    return Completion(text, _finish_reason(choice.get("finish_reason")), *_usage(body), logprobs)


def _parse_text(body: dict[str, Any]) -> Completion:
    choice = body["choices"][0]
    text = choice["text"]
    if not isinstance(text, str):
        raise TypeError("choices[0].text is not a string")
    logprobs = None
    lp = choice.get("logprobs")
    if lp and lp.get("tokens") is not None:
        tops = lp.get("top_logprobs") or [None] * len(lp["tokens"])
        logprobs = [
            TokenLogprob(token, float(logprob), _best_by_text((top or {}).items()))
            for token, logprob, top in zip(lp["tokens"], lp["token_logprobs"], tops)
        ]
    return Completion(text, _finish_reason(choice.get("finish_reason")), *_usage(body), logprobs)


def _best_by_text(pairs) -> dict[str, float]:
    """{token text: logprob}; distinct token ids can decode to the same text, keep the best."""
    out: dict[str, float] = {}
    for token, logprob in pairs:
        logprob = float(logprob)
        if token not in out or logprob > out[token]:
            out[token] = logprob
    return out


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds the server asks us to wait: `retry-after-ms` (OpenAI), or `Retry-After` as
    seconds or an HTTP date. None when absent or unreadable."""
    ms = response.headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return when.timestamp() - time.time()


def _error_message(response: httpx.Response) -> str:
    """The server's error message: OpenAI's {"error": {"message"}}, else the body's start."""
    try:
        body = response.json()
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict) and error.get("message"):
            return _one_line(str(error["message"]))
        if isinstance(error, str):
            return _one_line(error)
        if isinstance(body, dict) and body.get("detail"):
            return _one_line(str(body["detail"]))
    except ValueError:
        pass
    return _one_line(response.text) or response.reason_phrase or "no message"


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
