"""SL-CAI end to end: this checkout's engine vs the engine before issue #11, on the same run.

    .venv/bin/python benchmarks/sl_cai_engine.py [--baseline 9ba01a3] [--n 32] [--rounds 2]

The baseline is an earlier commit checked out as a git worktree in a temp directory and run
with the same venv (PYTHONPATH points at its `src`), so both sides load the same model files and
libraries and differ only in the package's code. Each side runs

    cai [--precision P] sl-cai generate --limit N --rounds R --no-cache ...

in a subprocess with the same seed and options, one after the other, in the order baseline,
fp32, int8, then fp32 and baseline again (so a drift of the machine's load shows as a gap between
the two runs of one side; --no-repeat skips the second pair).
Prints wall seconds per run, the speed-up of each precision over the
baseline, and how many rows' final revisions are identical to the baseline's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def worktree(rev: str, where: Path) -> Path:
    path = where / f"baseline-{rev}"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", "-f", str(path), rev],
        check=True,
        capture_output=True,
    )
    return path


def run_sl_cai(src: Path, out: Path, args, precision: str | None) -> float:
    env = {
        **os.environ,
        "PYTHONPATH": str(src / "src"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    root = ["--precision", precision] if precision else []
    cmd = [
        sys.executable,
        "-c",
        "from constitutional.cli import main; main()",
        *root,
        "sl-cai",
        "generate",
        "--prompts",
        "builtin:advbench",
        "--limit",
        str(args.n),
        "--rounds",
        str(args.rounds),
        "--max-tokens",
        str(args.max_tokens),
        "--helpful-ratio",
        "0",
        "--seed",
        "0",
        "--no-cache",
        "--out",
        str(out),
    ]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    env["OMP_NUM_THREADS"] = str(args.threads)  # both sides: torch reads it at import
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=src, check=False)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"run failed in {src}: {proc.stderr.strip().splitlines()[-1:]}")
    return seconds


def final_revisions(path: Path) -> list[str]:
    rows = [json.loads(line) for line in path.read_text().split("\n") if line.strip()]
    return [json.dumps(r.get("rounds", [])[-1:], sort_keys=True) for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--baseline", default="9ba01a3", help="commit before the engine work")
    ap.add_argument("--n", type=int, default=32, help="red-team prompts")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="pass --batch-size to both sides (default: each side's own default: 16 "
        "rows before #11, the KV memory budget's choice after)",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--repeat",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run fp32 and the baseline a second time (drift check)",
    )
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="cai-sl-engine-"))
    base = worktree(args.baseline, tmp)
    try:
        plan = [("baseline", base, None), ("fp32", REPO, "fp32"), ("int8", REPO, "int8")]
        if args.repeat:
            plan += [("fp32", REPO, "fp32"), ("baseline", base, None)]
        seconds: dict[str, list[float]] = {}
        outputs: dict[str, Path] = {}
        for k, (name, src, precision) in enumerate(plan):
            out = tmp / f"{k}-{name}.jsonl"
            s = run_sl_cai(src, out, args, precision)
            seconds.setdefault(name, []).append(s)
            outputs.setdefault(name, out)
            print(f"run {k + 1}/{len(plan)} {name:<9} {s:7.1f}s", flush=True)
    finally:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)],
            capture_output=True,
            check=False,
        )

    mean = {name: sum(v) / len(v) for name, v in seconds.items()}
    reference = final_revisions(outputs["baseline"])
    print(
        f"\nSL-CAI: {args.n} prompts x {args.rounds} rounds, up to {args.max_tokens} tokens, "
        f"batch {args.batch_size or 'default'}, {args.threads} threads; baseline = {args.baseline}\n"
    )
    print(f"{'engine':<10}{'mean s':>9}{'speed-up':>10}{'same final revisions':>23}")
    for name in ("baseline", "fp32", "int8"):
        same = sum(a == b for a, b in zip(reference, final_revisions(outputs[name])))
        print(
            f"{name:<10}{mean[name]:>9.1f}{mean['baseline'] / mean[name]:>9.2f}x"
            f"{f'{same}/{len(reference)}':>23}"
        )
    best = max(mean["baseline"] / mean["fp32"], mean["baseline"] / mean["int8"])
    print(f"\ntarget: >= 2x faster end to end: {best:.2f}x {'PASS' if best >= 2 else 'MISS'}")


if __name__ == "__main__":
    main()
