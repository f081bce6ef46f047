"""Rule-based rewards (Mu et al. 2024, https://arxiv.org/abs/2411.01111): a grader model answers
yes/no propositions about each reply, rules say which answers make a reply ideal for each kind of
request, and fitted weights turn the answers into one reward."""

from constitutional.rbr.evaluate import (
    evaluate,
    fit_model,
    grade,
    proposition_accuracy,
    ranking_accuracy,
)
from constitutional.rbr.fit import features, fit_weights, pairwise_accuracy
from constitutional.rbr.gold import Reply, load_replies
from constitutional.rbr.grader import Grader, p_yes
from constitutional.rbr.model import RbrModel, load_rbr
from constitutional.rbr.propositions import Propositions, load_propositions
from constitutional.rbr.reward import RbrReward

__all__ = [
    "Grader",
    "Propositions",
    "RbrModel",
    "RbrReward",
    "Reply",
    "evaluate",
    "features",
    "fit_model",
    "fit_weights",
    "grade",
    "load_propositions",
    "load_rbr",
    "load_replies",
    "p_yes",
    "pairwise_accuracy",
    "proposition_accuracy",
    "ranking_accuracy",
]
