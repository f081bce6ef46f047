"""Time `cai collective analyze` at Collective-Constitutional-AI scale on planted opinion groups.

    .venv/bin/python benchmarks/collective_scale.py [--participants 1000] [--statements 1200]
        [--votes 40000] [--groups 3] [--consensus 0.05] [--noise 0.1] [--repeats 3] [--seed 0]
        [--threads 1]

A synthetic electorate, seeded: `--groups` opinion groups of equal size; a share `--consensus`
of the statements is agreed by every group, each other statement gets a random stance (+1/-1)
per group (at least one group against). Every participant votes on `--votes / --participants` statements drawn at random
(as Polis shows statements), each vote flipped or made a pass with probability `--noise`. The
votes are written as a CSV in our layout, then each repeat times, like the CLI does:

  load:    `load_votes` (CSV → participant × statement matrix)
  analyze: `analyze` (PCA, k-means over k = 2..5 with silhouettes, per-group statistics)

and prints the median seconds of each and of their sum, the CPU seconds of the process (wall ≫
CPU means another job took the cores), and whether the median total meets the target
(`--target`, 5 s). As a check that the timing is of a meaningful analysis it also prints the
adjusted Rand index of found vs planted groups, and how many statements reach the consensus
threshold, planted or not (with ~11 votes per group and statement, sampling noise keeps many
planted ones below it). Nothing is asserted.

BLAS and OpenMP (PCA, k-means) are pinned to `--threads` (1; 0 keeps the libraries' default)
with threadpoolctl. On a 2-core box shared with other jobs, the default 2-thread pools spin when
a core is taken: PCA + k-means took 0.55 s on one thread and 11-19 s on two in one such test.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from constitutional.collective import AnalysisConfig, analyze, load_votes


def electorate(
    participants: int,
    statements: int,
    votes: int,
    groups: int,
    consensus: float,
    noise: float,
    seed: int,
) -> tuple[list[tuple[str, str, int]], list[int], set[str]]:
    """Rows of (participant, statement, vote), the planted group per participant, the consensus ids."""
    rng = np.random.default_rng(seed)
    n_consensus = round(statements * consensus)
    stance = rng.choice([-1, 1], size=(groups, statements))  # (groups, statements)
    unanimous = np.flatnonzero((stance == 1).all(axis=0))
    stance[
        rng.integers(groups, size=len(unanimous)), unanimous
    ] = -1  # only planted consensus is shared
    stance[:, :n_consensus] = 1
    per_person = min(statements, max(1, round(votes / participants)))
    planted = [i * groups // participants for i in range(participants)]
    rows = []
    for person, group in enumerate(planted):
        for s in rng.choice(statements, size=per_person, replace=False):
            vote = int(stance[group, s])
            if rng.random() < noise:
                vote = int(rng.choice([0, -vote]))
            rows.append((f"p{person}", f"s{s}", vote))
    return rows, planted, {f"s{s}" for s in range(n_consensus)}


def timed_run(path: Path, config: AnalysisConfig) -> tuple[float, float, dict]:
    start = time.perf_counter()
    votes = load_votes(path)
    loaded = time.perf_counter()
    result = analyze(votes, config)
    return loaded - start, time.perf_counter() - loaded, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--participants", type=int, default=1000)
    ap.add_argument("--statements", type=int, default=1200)
    ap.add_argument("--votes", type=int, default=40_000)
    ap.add_argument("--groups", type=int, default=3, help="planted opinion groups")
    ap.add_argument(
        "--consensus", type=float, default=0.05, help="share of statements every group agrees with"
    )
    ap.add_argument("--noise", type=float, default=0.1, help="chance a vote is flipped or a pass")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target", type=float, default=5.0, help="seconds for load + analyze")
    ap.add_argument(
        "--threads", type=int, default=1, help="BLAS/OpenMP threads; 0 = the libraries' default"
    )
    args = ap.parse_args()

    from sklearn.metrics import adjusted_rand_score
    from threadpoolctl import threadpool_limits

    threadpool_limits(args.threads or None)

    rows, planted, agreed = electorate(
        args.participants,
        args.statements,
        args.votes,
        args.groups,
        args.consensus,
        args.noise,
        args.seed,
    )
    config = AnalysisConfig(seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "votes.csv"
        with path.open("w", newline="") as f:
            csv.writer(f).writerows([("participant", "statement", "vote"), *rows])
        cpu = time.process_time()
        runs = [timed_run(path, config) for _ in range(args.repeats)]
        cpu = time.process_time() - cpu
    load = statistics.median(r[0] for r in runs)
    fit = statistics.median(r[1] for r in runs)
    total = statistics.median(r[0] + r[1] for r in runs)
    result = runs[-1][2]

    found = {p["participant"]: p["group"] for p in result["points"]}
    kept = [i for i in range(args.participants) if f"p{i}" in found]
    ari = adjusted_rand_score([planted[i] for i in kept], [found[f"p{i}"] for i in kept])
    above = {
        row["statement"]
        for row in result["statement_stats"]
        if row["consensus"] >= config.consensus_threshold
    }
    print(
        f"{args.participants} participants × {args.statements} statements × {len(rows)} votes "
        f"({result['participants']['kept']} kept), {args.groups} planted groups, seed {args.seed}, "
        f"threads {args.threads or 'default'}"
    )
    print(
        f"load {load:.2f} s + analyze {fit:.2f} s = {total:.2f} s (median of {args.repeats}; "
        f"CPU {cpu / args.repeats:.2f} s per repeat, all threads)"
    )
    print(
        f"found k={result['k']} (planted {args.groups}), adjusted Rand index {ari:.3f}; "
        f"{len(above)} statements reach consensus {config.consensus_threshold:g}: "
        f"{len(above & agreed)} of the {len(agreed)} planted, {len(above - agreed)} others"
    )
    verdict = "PASS" if total <= args.target else "MISS"
    print(f"target: load + analyze ≤ {args.target:g} s → {total:.2f} s {verdict}")


if __name__ == "__main__":
    main()
