"""The local backend's engine on a CUDA GPU: the same code in bf16, against plain `generate`.

    python benchmarks/gpu_engine.py --model-dir DIR [--n 1024] [--max-tokens 128]

DIR holds SmolLM2-135M's config and tokenizer; the weights are random (the embedded GGUF file is
too large to travel to a lent GPU machine). The speed is the real model's; the text is
gibberish that almost never reaches EOS, so every row runs its full length, as in the issue's
table. Prints:

  - tokens/s of plain `lm.generate` (length-sorted batches) and of `LocalBackend.generate`
    (continuous batching, slots from the KV budget), on the same greedy requests;
  - that `--precision int8` is the documented no-op on a GPU (the same bf16 model, same texts);
  - how many greedy texts the batched engine shares with one-by-one decoding (bf16 rounding
    depends on batch shape, so a near tie may flip; fp32 on a CPU is exact, see the tests);
  - that a second call whose prompts extend the first call's rows (critique, then revision)
    starts from the stored KV and decodes what a backend without the store decodes.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from engine_throughput import plain_generate  # this folder is on sys.path when run as a script
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from constitutional.backends.base import GenerationRequest
from constitutional.backends.local import LocalBackend

DATA = Path(__file__).resolve().parents[1] / "src" / "constitutional" / "data"


def random_model(model_dir: Path, out: Path) -> Path:
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return out


def requests(n: int, max_tokens: int) -> list[GenerationRequest]:
    prompts = [
        json.loads(line)["prompt"]
        for name in ("advbench", "self_instruct")
        for line in (DATA / f"{name}.jsonl").read_text().split("\n")
        if line.strip()
    ]
    return [
        GenerationRequest(messages=[{"role": "user", "content": p}], max_tokens=max_tokens)
        for p in (prompts * (n // len(prompts) + 1))[:n]
    ]


def timed(fn):
    torch.cuda.synchronize()
    t = time.perf_counter()
    result = fn()
    torch.cuda.synchronize()
    return result, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model-dir", required=True, type=Path, help="config.json + tokenizer files")
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=256, help="plain generate's batch size")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_engine.py needs a CUDA GPU")

    path = random_model(args.model_dir, Path(tempfile.mkdtemp(prefix="cai-gpu-")))
    engine = LocalBackend(str(path))
    print(
        f"{torch.cuda.get_device_name()}: model {engine.lm.dtype} on {engine.device}, "
        f"attention {engine.lm.config._attn_implementation}"
    )
    reqs = requests(args.n, args.max_tokens)
    engine.generate(reqs[:8])  # warm-up: allocator, kernels
    plain_generate(engine, reqs[:8], 8)

    (plain_tokens, plain_texts), plain_s = timed(
        lambda: plain_generate(engine, reqs, args.batch_size)
    )
    out, engine_s = timed(lambda: engine.generate(reqs))
    engine_tokens = sum(c.completion_tokens for c in out)
    print(f"\n{args.n} requests, up to {args.max_tokens} new tokens, greedy")
    print(f"{'path':<36}{'tokens':>8}{'seconds':>9}{'tokens/s':>10}")
    print(
        f"{f'plain generate (batch {args.batch_size})':<36}{plain_tokens:>8}{plain_s:>9.1f}"
        f"{plain_tokens / plain_s:>10.0f}"
    )
    print(
        f"{'engine (slots from the KV budget)':<36}{engine_tokens:>8}{engine_s:>9.1f}{engine_tokens / engine_s:>10.0f}"
    )
    print(
        f"engine vs plain: {plain_s / engine_s:.2f}x; texts equal: "
        f"{sum(a == c.text for a, c in zip(plain_texts, out))}/{len(reqs)}"
    )

    int8 = LocalBackend(str(path), precision="int8")
    few = reqs[
        :32
    ]  # against a fresh backend: `engine` holds these rows' KV, and reuse moves bf16 rounding
    same = [c.text for c in int8.generate(few)] == [
        c.text for c in LocalBackend(str(path)).generate(few)
    ]
    print(
        f"\n--precision int8 on the GPU: model dtype {int8.lm.dtype}, "
        f"same model object: {int8.lm is engine.lm}, same texts: {same}"
    )

    short = [GenerationRequest(prompt=r.messages[0]["content"], max_tokens=24) for r in reqs[:16]]
    one = LocalBackend(str(path), batch_size=1)
    agree = sum(
        a.text == b.text
        for a, b in zip(engine.generate(short), [one.generate([r])[0] for r in short])
    )
    print(f"batched greedy texts equal to one-by-one: {agree}/{len(short)} (bf16)")

    preamble = "You review answers against a written constitution, one principle at a time. " * 12
    first = [GenerationRequest(prompt=preamble + r.prompt, max_tokens=24) for r in short]
    drafts = engine.generate(first)
    second = [
        GenerationRequest(prompt=r.prompt + c.text + " Now rewrite it.", max_tokens=24)
        for r, c in zip(first, drafts)
    ]
    hits = [engine.kv_store.lookup(engine._encode([r.prompt])[0]) for r in second]
    reused = sum(h.n for h in hits if h) / sum(
        len(ids) for ids in engine._encode([r.prompt for r in second])
    )
    with_store = [c.text for c in engine.generate(second)]
    os.environ["CAI_KV_STORE_GB"] = "0"
    without = [c.text for c in LocalBackend(str(path)).generate(second)]
    print(
        f"KV store: {sum(map(bool, hits))}/{len(second)} prompts found a stored row, "
        f"{reused:.0%} of prompt tokens reused; texts equal to no store: "
        f"{sum(a == b for a, b in zip(with_store, without))}/{len(second)}"
    )


if __name__ == "__main__":
    main()
