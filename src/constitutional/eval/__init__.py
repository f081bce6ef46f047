"""Evaluation: Elo from pairwise judgements, harm metrics, judge and principle audits."""
