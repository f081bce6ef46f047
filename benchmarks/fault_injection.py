"""`cai sl-cai generate --backend openai` against a loopback server that fails 20 % of requests.

    .venv/bin/python benchmarks/fault_injection.py [--prompts 16] [--rounds 1] [--rate 0.2]

The server (127.0.0.1, a free port, up only while this script runs) answers chat and text
completions with a deterministic function of the request (seeded words; no model), so a clean
run and a faulty run must write the same bytes. `tests/faults.py`'s `FaultInjector` sits in
front of it and replaces `--rate` of the requests (exactly that share of every block of 5/rate
requests, at seeded places) with one of five faults, in equal numbers: HTTP 429, HTTP 500, a
stall the client gives up on (a real client-side timeout), a 200 whose body is not JSON, and a
200 whose JSON has no `choices`.

The command runs twice in this process through the `cai` app, with `--no-cache` so only the
backend's retries can save a row: once with no faults, once with them. The client's per-attempt
timeout and first backoff are shortened (the CLI has no options for them) so that a stall costs
about a second rather than the default 60 s. Printed: rows of each run (0 lost), whether the
traces and the SFT export are byte-identical, requests seen, faults injected by kind, retries
(= requests of the faulty run - requests of the clean run) and wall time of each run.

Bounds: at most `--max-requests` requests are answered (then a non-retryable 400 ends the run),
each attempt lasts at most `--client-timeout` seconds, each request at most 6 attempts, a
stalled request is released by the server after 5 s whatever the client does, and SIGALRM ends
the whole script after `--time-limit` seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # tests/faults.py

# FastAPI at module level: with postponed annotations, the routes' `Request` must resolve here.
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from faults import FaultInjector, running_server

FAULTS = (429, 500, "timeout", "malformed", "missing")
VOCABULARY = (
    "the response could cause harm so a safer answer explains the risks and points to help "
    "instead of giving steps it should refuse the dangerous part and stay kind and honest"
)
WORDS = VOCABULARY.split()


def answer(body: dict) -> str:
    """Deterministic 'model': words drawn by a seed hashed from the whole request."""
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).digest()
    rng = random.Random(digest)
    n = min(int(body.get("max_tokens") or 16), rng.randint(8, 40))
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def healthy_app(max_requests: int):
    """An OpenAI-shaped server whose answers depend only on the request body."""
    app, served = FastAPI(), Counter()

    def limited() -> JSONResponse | None:
        served["n"] += 1
        if served["n"] > max_requests:  # a non-retryable 4xx stops a runaway client
            return JSONResponse({"error": {"message": "request budget spent"}}, status_code=400)
        return None

    def usage(body: dict, text: str) -> dict:
        prompt = json.dumps(body.get("messages") or body.get("prompt"))
        return {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split())}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        text = answer(body)
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop",
        }
        return limited() or {
            "object": "chat.completion",
            "model": body["model"],
            "choices": [choice],
            "usage": usage(body, text),
        }

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        text = answer(body)
        choice = {"index": 0, "text": text, "finish_reason": "stop"}
        return limited() or {
            "object": "text_completion",
            "model": body["model"],
            "choices": [choice],
            "usage": usage(body, text),
        }

    return app


def fault_plan(rate: float, seed: int, length: int) -> list:
    """Blocks of len(FAULTS)/rate requests, each with one fault of every kind at seeded places:
    exactly `rate` of the requests fail, every kind as often, faults sometimes back to back."""
    rng, block = random.Random(seed), round(len(FAULTS) / rate)
    plan: list = []
    while len(plan) < length:
        chunk = [*FAULTS, *["ok"] * (block - len(FAULTS))]
        rng.shuffle(chunk)
        plan += chunk
    return plan[:length]


@contextmanager
def client_settings(**defaults) -> Iterator[None]:
    """Shorten OpenAIBackend's keyword defaults (timeout, backoff) for the commands run inside."""
    from constitutional.backends.openai_http import OpenAIBackend

    saved = dict(OpenAIBackend.__init__.__kwdefaults__)
    OpenAIBackend.__init__.__kwdefaults__.update(defaults)
    try:
        yield
    finally:
        OpenAIBackend.__init__.__kwdefaults__.clear()
        OpenAIBackend.__init__.__kwdefaults__.update(saved)


def sl_cai(base_url: str, out: Path, args) -> float:
    """One `cai sl-cai generate` run through the openai backend; returns its wall seconds."""
    from typer.testing import CliRunner

    from constitutional.cli import app

    argv = [
        "sl-cai",
        "generate",
        "--backend",
        "openai",
        "--base-url",
        base_url,
        "--model",
        "scripted",
        "--prompts",
        "builtin:advbench",
        "--limit",
        str(args.prompts),
        "--rounds",
        str(args.rounds),
        "--max-tokens",
        "48",
        "--concurrency",
        str(args.concurrency),
        "--seed",
        "0",
        "--no-cache",
        "--out",
        str(out),
    ]
    start = time.perf_counter()
    result = CliRunner().invoke(app, argv)
    if result.exit_code != 0:
        raise SystemExit(
            f"cai {' '.join(argv)} failed ({result.exit_code}): {result.output}{result.exception!r}"
        )
    return time.perf_counter() - start


def lines(path: Path) -> int:
    return sum(1 for _ in path.open())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=16, help="red-team prompts (advbench)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--rate", type=float, default=0.2, help="share of requests that fail, in (0, 1]"
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the fault plan")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--client-timeout", type=float, default=1.0)
    parser.add_argument("--max-requests", type=int, default=2000)
    parser.add_argument(
        "--time-limit", type=int, default=600, help="seconds before SIGALRM ends the script"
    )
    args = parser.parse_args()
    if not 0 < args.rate <= 1:
        parser.error("--rate must be in (0, 1]")
    signal.alarm(args.time_limit)

    injector = FaultInjector(healthy_app(args.max_requests), hang_s=5.0)
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_server(injector) as base_url,
        client_settings(timeout=args.client_timeout, backoff_base=0.05, backoff_max=1.0),
    ):
        clean, faulty = Path(tmp, "clean", "sl.jsonl"), Path(tmp, "faulty", "sl.jsonl")
        clean_s = sl_cai(base_url, clean, args)
        clean_requests = injector.requests
        injector.reset(fault_plan(args.rate, args.seed, args.max_requests))
        plan = list(injector.plan)
        faulty_s = sl_cai(base_url, faulty, args)
        faulty_requests = injector.requests
        injected = Counter(str(f) for f in plan[:faulty_requests] if f != "ok")
        report = {
            "prompts": args.prompts,
            "rounds": args.rounds,
            "fault_rate": args.rate,
            "rows": {"clean": lines(clean), "faulty": lines(faulty)},
            "sft_rows": {
                "clean": lines(clean.with_suffix(".sft.jsonl")),
                "faulty": lines(faulty.with_suffix(".sft.jsonl")),
            },
            "traces_identical": clean.read_bytes() == faulty.read_bytes(),
            "sft_identical": clean.with_suffix(".sft.jsonl").read_bytes()
            == faulty.with_suffix(".sft.jsonl").read_bytes(),
            "requests": {"clean": clean_requests, "faulty": faulty_requests},
            "faults_injected": dict(sorted(injected.items())),
            "retries": faulty_requests - clean_requests,
            "seconds": {"clean": round(clean_s, 2), "faulty": round(faulty_s, 2)},
        }
    from constitutional.stats import rate

    report["rows_lost"] = report["rows"]["clean"] - report["rows"]["faulty"]
    # Rates with their n and 95 % Wilson interval: the faults actually met, and rows lost.
    report["fault_share"] = rate(f != "ok" for f in plan[:faulty_requests])
    report["rows_lost_share"] = rate(
        [True] * report["rows_lost"] + [False] * report["rows"]["faulty"]
    )
    print(json.dumps(report, indent=2))
    ok = report["rows_lost"] == 0 and report["traces_identical"] and report["sft_identical"]
    ok = ok and report["retries"] == sum(injected.values())  # each fault cost exactly one retry
    print("PASS" if ok else "FAIL", file=sys.stderr)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
