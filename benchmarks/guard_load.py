"""Load test of the guard proxy on loopback: N concurrent streams through it vs straight to the
upstream, to see what the proxy itself adds per streamed chunk.

    .venv/bin/python benchmarks/guard_load.py [--concurrency 16,128,500] [--rounds 4] [--holdback 64]

The upstream is a scripted OpenAI-style server streaming `--chunks` pieces of `--piece` chars,
`--delay-ms` apart (a stand-in for token generation); the guard is a scripted substring check,
so the numbers are the proxy's cost (parsing, thread hops, re-encoding, audit writes), not a
classifier's. Upstream and proxy run in their own processes; the load runs here on asyncio.

Latency of chunk j of a stream = time from sending the request until the text up to the end of
the upstream's chunk j has arrived. Added latency = proxied minus the mean direct latency of the
same j. The hold-back alone delays each chunk by about holdback/piece * delay (the tail is
released with the last chunk), so `--holdback 0` isolates the proxy's overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import socket
import statistics
import tempfile
import time
from pathlib import Path

import httpx

WORD = "calm sea "


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_upstream(port: int, chunks: int, piece: int, delay_s: float) -> None:
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse

    app = FastAPI()
    text = (WORD * (chunks * piece // len(WORD) + 1))[: chunks * piece]

    @app.post("/v1/chat/completions")
    async def chat(body: dict):
        async def events():
            for i in range(0, len(text), piece):
                await asyncio.sleep(delay_s)
                choice = {"index": 0, "delta": {"content": text[i : i + piece]}}
                yield f"data: {json.dumps({'id': 'x', 'choices': [choice]})}\n\n"
            choice = {"index": 0, "delta": {}, "finish_reason": "stop"}
            yield f"data: {json.dumps({'id': 'x', 'choices': [choice]})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


class SubstringGuard:
    """Flags text containing a word the scripted upstream never says."""

    constitution_hash = "bench"

    def check_input(self, messages):
        from constitutional.guard.protocol import Verdict

        return Verdict(0.0, False, "cheap")

    def check_output(self, messages, response_so_far):
        from constitutional.guard.protocol import Verdict

        hit = "storm" in response_so_far
        return Verdict(float(hit), hit, "cheap")


def run_proxy(port: int, upstream: str, audit_db: str, holdback: int) -> None:
    import uvicorn

    from constitutional.guard.proxy import create_guard_app

    app = create_guard_app(
        SubstringGuard(), upstream, audit_db=Path(audit_db), holdback_chars=holdback
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


async def one_stream(client: httpx.AsyncClient, url: str, piece: int) -> list[float] | None:
    """Seconds until the end of each upstream chunk's text arrived; None on any error."""
    body = {"messages": [{"role": "user", "content": "Describe the sea."}], "stream": True}
    start, received, arrivals = time.perf_counter(), 0, []
    try:
        async with client.stream("POST", url, json=body) as r:
            if r.status_code != 200:
                return None
            async for line in r.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                choices = json.loads(line[6:])["choices"]
                received += len(choices[0]["delta"].get("content", "")) if choices else 0
                now = time.perf_counter() - start
                while (len(arrivals) + 1) * piece <= received:
                    arrivals.append(now)
                if choices and choices[0].get("finish_reason") == "content_filter":
                    return None
    except httpx.HTTPError:
        return None
    return arrivals


async def load(url: str, concurrency: int, rounds: int, piece: int, chunks: int):
    """rounds x concurrency streams, `concurrency` in flight at once."""
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        start = time.perf_counter()
        results = []
        for _ in range(rounds):
            batch = [one_stream(client, url, piece) for _ in range(concurrency)]
            results += await asyncio.gather(*batch)
        wall = time.perf_counter() - start
    good = [r for r in results if r is not None and len(r) == chunks]
    return good, len(results) - len(good), wall


def wait_up(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def pct(values: list[float], q: float) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) > 1
        else values[0]
    )


def measure(upstream: str, proxy: str, concurrency: int, args: argparse.Namespace) -> dict:
    """ABBA runs of `concurrency` streams at a time, straight and through the proxy."""
    shape = (concurrency, args.rounds, args.piece, args.chunks)
    runs: dict[str, tuple[list, int, float]] = {}
    for name, url in [  # ABBA: a drift in machine load hits both alike
        ("direct", f"{upstream}/chat/completions"),
        ("proxy", f"{proxy}/v1/chat/completions"),
        ("proxy", f"{proxy}/v1/chat/completions"),
        ("direct", f"{upstream}/chat/completions"),
    ]:
        good, errors, wall = asyncio.run(load(url, *shape))
        old = runs.get(name, ([], 0, 0.0))
        runs[name] = (old[0] + good, old[1] + errors, old[2] + wall)
    direct, proxied = runs["direct"][0], runs["proxy"][0]
    mean_direct = [statistics.fmean(r[j] for r in direct) for j in range(args.chunks)]
    added = [(r[j] - mean_direct[j]) * 1000 for r in proxied for j in range(args.chunks)]
    return {
        "concurrency": concurrency,
        "streams": 2 * concurrency * args.rounds,
        "runs": runs,
        "added_p50": pct(added, 50),
        "added_p95": pct(added, 95),
    }


def report(result: dict, args: argparse.Namespace) -> None:
    streams = result["streams"]
    print(
        f"\n{result['concurrency']} concurrent: {streams} streams per path, {args.chunks} chunks of "
        f"{args.piece} chars {args.delay_ms:g} ms apart, holdback {args.holdback}"
    )
    for name, (good, errors, wall) in result["runs"].items():
        first = [r[0] * 1000 for r in good]
        print(
            f"{name:>6}: errors {errors}, {streams / wall:.1f} streams/s, first chunk "
            f"p50 {pct(first, 50):.1f} ms p95 {pct(first, 95):.1f} ms"
        )
    print(
        f"added latency per chunk: p50 {result['added_p50']:.1f} ms, p95 {result['added_p95']:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--concurrency", default="16", help="streams in flight at once; a comma list runs each"
    )
    parser.add_argument("--rounds", type=int, default=4, help="batches of --concurrency streams")
    parser.add_argument("--chunks", type=int, default=64, help="chunks per upstream stream")
    parser.add_argument("--piece", type=int, default=8, help="characters per upstream chunk")
    parser.add_argument("--delay-ms", type=float, default=5.0, help="upstream gap between chunks")
    parser.add_argument("--holdback", type=int, default=64, help="the proxy's hold-back chars")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    if not all(1 <= c <= 1000 for c in levels):
        raise SystemExit("--concurrency: each level in 1..1000 (loopback load, bounded)")

    up_port, proxy_port = free_port(), free_port()
    upstream, proxy = f"http://127.0.0.1:{up_port}/v1", f"http://127.0.0.1:{proxy_port}"
    with tempfile.TemporaryDirectory() as tmp:
        procs = [
            mp.Process(
                target=run_upstream, args=(up_port, args.chunks, args.piece, args.delay_ms / 1000)
            ),
            mp.Process(target=run_proxy, args=(proxy_port, upstream, f"{tmp}/a.db", args.holdback)),
        ]
        for p in procs:
            p.start()
        try:
            wait_up(f"{upstream}/models")
            wait_up(f"{proxy}/healthz")
            for level in levels:
                report(measure(upstream, proxy, level, args), args)
        finally:
            for p in procs:
                p.terminate()
                p.join()


if __name__ == "__main__":
    main()
