"""Polis-style opinion analysis: opinion groups, per-group agreement, consensus and division.

The method follows Polis (Small et al. 2021, "Polis: Scaling deliberation by mapping high
dimensional opinion spaces") as used by Collective Constitutional AI (Anthropic and CIP, 2023):

1. participant × statement matrix, 1 agree / -1 disagree / 0 pass / NaN unseen; participants with
   fewer than `min_votes` votes are left out;
2. PCA to 2-D on the matrix with unseen votes imputed by the statement's mean; a participant who
   saw few statements sits near the centre only because of the imputation, so each projection is
   scaled by sqrt(n_statements / n_voted);
3. k-means on the projections for each k in `k_range`; the k with the best silhouette wins;
4. per group and statement: p(agree) = (agrees + 1) / (votes + 2) and likewise p(disagree), passes
   counting as votes (Laplace smoothing, so a group that barely saw a statement sits near 1/2);
5. group-aware consensus = product over groups of p(agree): high only when every group agrees;
   division = max - min of the groups' p(agree); representative statements of a group = those
   whose in-group agreement (or disagreement) most exceeds the rest's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from constitutional.collective.votes import Votes
from constitutional.errors import UserError


@dataclass(frozen=True)
class AnalysisConfig:
    """Thresholds of an analysis; every field has a default that suits a few hundred participants."""

    min_votes: int = 7  # participants with fewer votes are left out (Polis uses 7)
    k_min: int = 2  # smallest number of opinion groups tried
    k_max: int = 5  # largest number tried (capped at participants - 1)
    seed: int = 0  # k-means initialisation
    consensus_threshold: float = (
        0.5  # product of group agree probabilities to count as consensus, in (0, 1)
    )
    divisive_threshold: float = (
        0.3  # spread of group agree probabilities to count as divisive, in (0, 1)
    )
    min_rep_votes: int = (
        3  # a group needs this many votes on a statement for it to be representative
    )
    top: int = 10  # longest consensus / divisive / representative lists


def smoothed(hits: np.ndarray, votes: np.ndarray) -> np.ndarray:
    """Laplace-smoothed probability (hits + 1) / (votes + 2); 1/2 when nobody voted."""
    return (hits + 1.0) / (votes + 2.0)


def project(matrix: np.ndarray, seed: int = 0) -> tuple[np.ndarray, list[float]]:
    """2-D PCA coordinates of each row, scaled for how many statements the row voted on.

    Returns:
        ((n_participants, 2) coordinates, explained variance ratio per component).
    """
    from sklearn.decomposition import PCA

    seen = ~np.isnan(matrix)
    counts = seen.sum(axis=0)
    means = np.divide(
        np.nansum(matrix, axis=0), counts, out=np.zeros(matrix.shape[1]), where=counts > 0
    )
    filled = np.where(seen, matrix, means)  # (n_participants, n_statements)
    n_components = min(2, *filled.shape)
    pca = PCA(n_components=n_components, random_state=seed)
    coords = pca.fit_transform(filled)
    if n_components < 2:
        coords = np.hstack([coords, np.zeros((len(coords), 2 - n_components))])
    scale = np.sqrt(matrix.shape[1] / np.maximum(seen.sum(axis=1), 1))  # (n_participants,)
    return coords * scale[:, None], [float(v) for v in pca.explained_variance_ratio_]


def cluster(
    coords: np.ndarray, k_min: int, k_max: int, seed: int
) -> tuple[np.ndarray, dict[int, float]]:
    """k-means labels for the k in [k_min, k_max] with the best silhouette (ties: the smaller k).

    k is capped at n - 1 participants and at the number of distinct points; with fewer than two
    distinct points everyone is one group.

    Groups are numbered by their first member, so the numbering does not depend on k-means.
    Returns (labels, silhouette score per k tried).
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    n = len(coords)
    if n < 3:
        raise UserError(f"need at least 3 participants to find opinion groups, have {n}")
    scores: dict[int, float] = {}
    best: np.ndarray | None = None
    best_score = -np.inf
    distinct = len(np.unique(coords.round(9), axis=0))  # k above this would leave empty clusters
    for k in range(max(2, k_min), min(k_max, n - 1, distinct) + 1):
        labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(coords)
        scores[k] = float(silhouette_score(coords, labels))
        if scores[k] > best_score:
            best, best_score = labels, scores[k]
    if best is None:
        best = np.zeros(n, dtype=int)
    order = {label: i for i, label in enumerate(dict.fromkeys(best.tolist()))}
    return np.array([order[label] for label in best.tolist()]), scores


def _counts(matrix: np.ndarray) -> dict[str, np.ndarray]:
    """Per-statement vote counts of the rows of `matrix`."""
    return {
        "votes": (~np.isnan(matrix)).sum(axis=0),
        "agree": (matrix == 1).sum(axis=0),
        "disagree": (matrix == -1).sum(axis=0),
        "pass": (matrix == 0).sum(axis=0),
    }


def _representative(
    votes: Votes, matrix: np.ndarray, labels: np.ndarray, group: int, config: AnalysisConfig
) -> list[dict[str, Any]]:
    """Statements on which `group` stands furthest from everyone else, best first."""
    inside, outside = _counts(matrix[labels == group]), _counts(matrix[labels != group])
    rows = []
    for direction in ("agree", "disagree"):
        p_in = smoothed(inside[direction], inside["votes"])
        p_out = smoothed(outside[direction], outside["votes"])
        for j in np.flatnonzero((inside["votes"] >= config.min_rep_votes) & (p_in > p_out)):
            rows.append(
                {
                    "statement": votes.statements[j],
                    "direction": direction,
                    "p_in": float(p_in[j]),
                    "p_out": float(p_out[j]),
                    "difference": float(p_in[j] - p_out[j]),
                    "votes": int(inside["votes"][j]),
                }
            )
    rows.sort(key=lambda r: -r["difference"])
    return _with_text(votes, rows[: config.top])


def _with_text(votes: Votes, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if votes.texts:
        for row in rows:
            row["text"] = votes.texts.get(row["statement"])
    return rows


def analyze(votes: Votes, config: AnalysisConfig | None = None) -> dict[str, Any]:
    """Opinion groups, per-group agreement, consensus and divisive statements of a vote matrix.

    Args:
        votes: from `load_votes`.
        config: thresholds; defaults as in `AnalysisConfig`.

    Returns:
        A JSON-ready dict: participants kept, 2-D points with their group, silhouette per k,
        per-statement stats, consensus and divisive lists, representative statements per group.
    """
    config = config or AnalysisConfig()
    n_voted = (~np.isnan(votes.matrix)).sum(axis=1)
    keep = n_voted >= config.min_votes
    matrix = votes.matrix[keep]  # (n_kept, n_statements)
    kept = [p for p, k in zip(votes.participants, keep, strict=True) if k]
    if len(kept) < 3:
        raise UserError(
            f"only {len(kept)} participants have at least {config.min_votes} votes; "
            "need 3 (lower --min-votes?)"
        )
    # One BLAS/OpenMP thread: these matrices are small, and a multi-threaded pool that has to
    # share its cores with anything else spins and runs 10-20x slower (measured on 2 cores).
    with threadpool_limits(1):
        coords, explained = project(matrix, config.seed)
        labels, scores = cluster(coords, config.k_min, config.k_max, config.seed)
    k = int(labels.max()) + 1

    groups = [_counts(matrix[labels == g]) for g in range(k)]
    p_agree = np.stack([smoothed(c["agree"], c["votes"]) for c in groups])  # (k, n_statements)
    p_disagree = np.stack([smoothed(c["disagree"], c["votes"]) for c in groups])
    consensus = p_agree.prod(axis=0)
    spread = p_agree.max(axis=0) - p_agree.min(axis=0)
    total = _counts(matrix)

    statements = _statement_stats(votes, groups, total, (p_agree, p_disagree), (consensus, spread))
    return {
        "participants": {
            "total": len(votes.participants),
            "kept": len(kept),
            "min_votes": config.min_votes,
        },
        "statements": len(votes.statements),
        "votes": int(np.count_nonzero(~np.isnan(matrix))),
        "config": {
            "k_min": config.k_min,
            "k_max": config.k_max,
            "seed": config.seed,
            "consensus_threshold": config.consensus_threshold,
            "divisive_threshold": config.divisive_threshold,
            "min_rep_votes": config.min_rep_votes,
        },
        "k": k,
        "silhouette": {str(kk): s for kk, s in scores.items()},
        "explained_variance": explained,
        "points": [
            {"participant": p, "x": float(x), "y": float(y), "group": int(g), "votes": int(n)}
            for p, (x, y), g, n in zip(kept, coords, labels, n_voted[keep], strict=True)
        ],
        "groups": [
            {
                "group": g,
                "size": int((labels == g).sum()),
                "representative": _representative(votes, matrix, labels, g, config),
            }
            for g in range(k)
        ],
        "statement_stats": statements,
        "consensus": _ranked(votes, consensus, "consensus", config.consensus_threshold, config.top),
        "divisive": _ranked(votes, spread, "spread", config.divisive_threshold, config.top),
    }


def _statement_stats(
    votes: Votes, groups: list[dict], total: dict, p: tuple, scores: tuple
) -> list[dict[str, Any]]:
    """Per statement: vote counts overall and per group, smoothed agreement, consensus, spread."""
    p_agree, p_disagree = p
    consensus, spread = scores
    statements = []
    for j, sid in enumerate(votes.statements):
        statements.append(
            {
                "statement": sid,
                **({"text": votes.texts.get(sid)} if votes.texts else {}),
                **{name: int(total[name][j]) for name in ("votes", "agree", "disagree", "pass")},
                "consensus": float(consensus[j]),
                "spread": float(spread[j]),
                "groups": [
                    {
                        "group": g,
                        **{
                            name: int(c[name][j]) for name in ("votes", "agree", "disagree", "pass")
                        },
                        "p_agree": float(p_agree[g, j]),
                        "p_disagree": float(p_disagree[g, j]),
                    }
                    for g, c in enumerate(groups)
                ],
            }
        )
    return statements


def _ranked(
    votes: Votes, values: np.ndarray, key: str, threshold: float, top: int
) -> list[dict[str, Any]]:
    """The TOP statements whose VALUES reach THRESHOLD, highest first (ties in statement order)."""
    order = [j for j in np.argsort(-values, kind="stable") if values[j] >= threshold]
    return _with_text(
        votes, [{"statement": votes.statements[j], key: float(values[j])} for j in order[:top]]
    )
