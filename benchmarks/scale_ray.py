"""SL-CAI on local Ray with N workers vs one process, same prompts: speed-up and identical output.

    .venv/bin/python benchmarks/scale_ray.py                      # embedded model, 2 workers
    .venv/bin/python benchmarks/scale_ray.py --n 64 --workers 2 --rounds 2

Both paths run `generate_sl_data` without the response cache. (a) one process with every core
(`--threads` = workers × 1); (b) a local Ray instance with `--workers` actors of one thread each,
each loading its own copy of the model. The driver cuts each call into the single-process
batches, so the traces must be byte-identical; this is checked, not assumed. Parallelism needs at
least `workers` batches per call: keep `--n` ≥ workers × `--batch-size`.

Printed: wall seconds of (a), of (b) with and without Ray start-up and model loading, speed-ups,
tokens per prompt (for docs/scaling.md's cost estimate) and whether outputs are identical.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run(backend, args) -> tuple[list[dict], float]:
    from constitutional.constitution import load_constitution
    from constitutional.generate import load_prompts
    from constitutional.sl_cai import SLConfig, generate_sl_data

    rules = load_constitution("default")
    red = load_prompts("builtin:advbench", chat_allowed=False)[: args.n]
    config = SLConfig(
        rounds=args.rounds,
        max_tokens=args.max_tokens,
        critique_max_tokens=args.max_tokens,
        fewshot=2,
        helpful_ratio=0.0,
        seed=0,
    )
    start = time.perf_counter()
    traces = generate_sl_data(rules, red, [], backend, config)
    return traces, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--n", type=int, default=32, help="red-team prompts (advbench)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ray-first", action="store_true", help="run the Ray path first")
    args = parser.parse_args()

    import torch

    from constitutional.backends import make_backend
    from constitutional.scale import ExecutorConfig, executor_backend

    torch.set_num_threads(args.workers)
    options = {"batch_size": args.batch_size}

    def one_process():
        return run(make_backend("local", args.model, use_cache=False, **options), args)

    def on_ray():
        started = time.perf_counter()
        where = ExecutorConfig("ray", workers=args.workers, cpus_per_worker=1)
        with executor_backend(where, "local", args.model, options, use_cache=False) as fanned:
            ready_s = time.perf_counter() - started
            traces, seconds = run(fanned, args)
        return traces, seconds, ready_s, time.perf_counter() - started

    if args.ray_first:  # on a shared machine, swap the order to see how much the load moved
        spread, ray_s, ready_s, total_s = on_ray()
        single, single_s = one_process()
    else:
        single, single_s = one_process()
        spread, ray_s, ready_s, total_s = on_ray()

    tokens = sum(t["tokens"]["prompt"] + t["tokens"]["completion"] for t in single)
    new = sum(t["tokens"]["completion"] for t in single)
    same = json.dumps(single, sort_keys=True) == json.dumps(spread, sort_keys=True)
    print(
        json.dumps(
            {
                "prompts": args.n,
                "rounds": args.rounds,
                "max_tokens": args.max_tokens,
                "batch_size": args.batch_size,
                "workers": args.workers,
                "single_process_s": round(single_s, 2),
                "ray_startup_s": round(ready_s, 2),
                "ray_s": round(ray_s, 2),
                "ray_with_startup_s": round(total_s, 2),
                "speedup": round(single_s / ray_s, 3),
                "speedup_with_startup": round(single_s / total_s, 3),
                "prompt_tokens_per_prompt": round((tokens - new) / args.n, 1),
                "completion_tokens_per_prompt": round(new / args.n, 1),
                "identical": same,
            },
            indent=1,
        )
    )
    if not same:
        raise SystemExit("outputs differ between one process and Ray")


if __name__ == "__main__":
    main()
