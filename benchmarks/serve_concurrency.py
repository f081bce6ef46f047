"""Aggregate tokens/s of `cai serve` at 1, 8 and 32 concurrent clients, in one run.

    .venv/bin/python benchmarks/serve_concurrency.py [--model embedded] [--requests 32]
        [--max-tokens 32] [--clients 1 8 32] [--slots 32] [--threads 1]

The app (`create_app` over the local backend) runs on a real uvicorn on 127.0.0.1 in this
process; each client is a thread sending its share of the same `--requests` chat requests one
after another over HTTP (greedy, `max_tokens` each). Tokens are the completions' own counts
(`usage.completion_tokens`); the rate is their sum over the level's wall time. Every level gets
the same requests, so their texts must equal the 1-client level's (each request decodes as it
would alone). The baseline row sends the 8-client load to the same backend behind the fallback
engine (one `generate` call at a time: how the server worked before it batched across requests).

The KV budget ($CAI_KV_BUDGET_GB) caps the slots at what rows as long as the model's context
would take; unless it is set, this benchmark raises it so that `--slots` rows fit (its rows are
short: the memory really used is far below the budget).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("CAI_KV_BUDGET_GB", "24")

import httpx
import uvicorn

from constitutional.backends.local import LocalBackend
from constitutional.generate import load_prompts
from constitutional.serve import create_app
from constitutional.stats import wilson


class Serial:
    """The backend without its batching interface: the app falls back to one call at a time."""

    def __init__(self, backend: LocalBackend):
        self.name, self.model, self.backend = backend.name, backend.model, backend

    def generate(self, requests, on_result=None):
        return self.backend.generate(requests, on_result)


def serve(app) -> tuple[str, uvicorn.Server, threading.Thread]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    return f"http://127.0.0.1:{sock.getsockname()[1]}/v1", server, thread


def run_level(app, bodies: list[dict], clients: int) -> dict:
    """Send `bodies` from `clients` threads; returns tokens, seconds, texts and latencies."""
    url, server, thread = serve(app)
    latencies: list[float] = []

    def send(body: dict) -> tuple[str, int]:
        start = time.monotonic()
        response = httpx.post(f"{url}/chat/completions", json=body, timeout=600)
        response.raise_for_status()
        latencies.append(time.monotonic() - start)
        answer = response.json()
        return answer["choices"][0]["message"]["content"], answer["usage"]["completion_tokens"]

    start = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(send, bodies))
    seconds = time.monotonic() - start
    server.should_exit = True
    thread.join()
    tokens = sum(n for _, n in results)
    return {
        "tokens": tokens,
        "seconds": seconds,
        "texts": [t for t, _ in results],
        "p50": statistics.median(latencies),
        "max": max(latencies),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--slots", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch threads; 0 keeps torch's default")
    args = ap.parse_args()
    if args.threads:  # read by the local backend when it loads the model
        os.environ["CAI_THREADS"] = str(args.threads)

    backend = LocalBackend(args.model, batch_size=args.slots)
    prompts = load_prompts("builtin:self_instruct")[: args.requests]
    bodies = [
        {
            "messages": [{"role": "user", "content": p["prompt"]}],
            "max_tokens": args.max_tokens,
            "temperature": 0,
        }
        for p in prompts
    ]
    slots = backend.batcher().slots
    print(
        f"model {args.model}, {len(bodies)} requests x max_tokens {args.max_tokens}, {slots} slots, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    run_level(create_app(backend), bodies[:2], 2)  # warm-up: first-call costs out of the timings

    levels = [(f"{c} client{'s' if c > 1 else ''}", create_app(backend), c) for c in args.clients]
    levels.append(("8 clients, one call at a time (before)", create_app(Serial(backend)), 8))
    rows, first = [], None
    for label, app, clients in levels:
        r = run_level(app, bodies, clients)
        first = first or r
        rows.append((label, r))
    print(
        "| clients | tokens | seconds | tok/s | × 1 client | p50 / max latency s | texts = 1 client's |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    base = first["tokens"] / first["seconds"]
    for label, r in rows:
        rate = r["tokens"] / r["seconds"]
        same = sum(a == b for a, b in zip(r["texts"], first["texts"]))
        low, high = wilson(same, len(bodies))
        print(
            f"| {label} | {r['tokens']} | {r['seconds']:.1f} | {rate:.1f} | {rate / base:.2f}× | "
            f"{r['p50']:.1f} / {r['max']:.1f} | {same}/{len(bodies)} (95 % CI {low:.2f}-{high:.2f}) |"
        )


if __name__ == "__main__":
    main()
