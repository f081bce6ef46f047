"""SL-CAI on vLLM (GPU only): pipeline throughput vs vLLM's own on the same requests.

    cai export embedded --out /tmp/smol                 # or any HF model directory
    .venv/bin/python benchmarks/vllm_pipeline.py --model /tmp/smol --n 512 --rounds 4

(a) `generate_sl_data` on `--backend vllm` (uncached), with a recording wrapper that keeps each
call's requests; (b) the recorded requests replayed straight into `LLM.generate`, call by call,
on the same engine. (a)/(b) in generated tokens per second is the pipeline's efficiency: our
per-request work (templating, seeds, checks) against the engine's. Also printed: prompt and
generated tokens per prompt, the inputs of the cost estimate in docs/scaling.md. Without a CUDA
GPU or without vllm it exits with status 2 and a one-line reason.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class Recording:
    """Forwards to a backend and keeps the requests of every `generate` call, in order."""

    def __init__(self, backend):
        self.backend, self.calls = backend, []

    def generate(self, requests, on_result=None):
        self.calls.append(list(requests))
        return self.backend.generate(requests, on_result)

    def __getattr__(self, name):
        return getattr(self.backend, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="HF directory (see `cai export`)")
    parser.add_argument("--n", type=int, default=512, help="red-team prompts (advbench has 520)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=200)
    args = parser.parse_args()

    from constitutional.backends import make_backend
    from constitutional.backends.vllm_offline import import_vllm
    from constitutional.constitution import load_constitution
    from constitutional.errors import UserError
    from constitutional.generate import load_prompts
    from constitutional.sl_cai import SLConfig, generate_sl_data

    try:
        vllm = import_vllm()
        backend = make_backend("vllm", args.model, use_cache=False)
    except UserError as e:
        print(f"vllm_pipeline: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    engine = backend.inner
    red = load_prompts("builtin:advbench", chat_allowed=False)[: args.n]
    config = SLConfig(rounds=args.rounds, max_tokens=args.max_tokens, helpful_ratio=0.0, seed=0)
    recording = Recording(backend)

    start = time.perf_counter()
    traces = generate_sl_data(load_constitution("default"), red, [], recording, config)
    pipeline_s = time.perf_counter() - start
    generated = sum(t["tokens"]["completion"] for t in traces)
    prompt_tokens = sum(t["tokens"]["prompt"] for t in traces)

    raw_s, raw_tokens = 0.0, 0
    for requests in recording.calls:  # the same calls, straight into the engine
        prompts = [engine.render(r.messages or r.prompt) for r in requests]
        params = [
            vllm.SamplingParams(
                temperature=r.temperature,
                top_p=r.top_p,
                max_tokens=r.max_tokens,
                seed=r.seed,
                stop=list(r.stop) or None,
            )
            for r in requests
        ]
        start = time.perf_counter()
        outputs = engine.llm.generate(prompts, params, use_tqdm=False)
        raw_s += time.perf_counter() - start
        raw_tokens += sum(len(o.outputs[0].token_ids) for o in outputs)

    pipeline_tps, raw_tps = generated / pipeline_s, raw_tokens / raw_s
    print(
        json.dumps(
            {
                "model": args.model,
                "prompts": args.n,
                "rounds": args.rounds,
                "calls": len(recording.calls),
                "pipeline_s": round(pipeline_s, 2),
                "pipeline_tok_s": round(pipeline_tps, 1),
                "raw_s": round(raw_s, 2),
                "raw_tok_s": round(raw_tps, 1),
                "ratio": round(pipeline_tps / raw_tps, 3),
                "prompt_tokens_per_prompt": round(prompt_tokens / args.n, 1),
                "completion_tokens_per_prompt": round(generated / args.n, 1),
                "prompts_per_hour": round(args.n / pipeline_s * 3600),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
