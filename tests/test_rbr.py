"""Rule-based rewards: the YAML and its FILE:LINE errors, P(yes) and rule features by hand, weight
fitting that recovers planted weights, the grader on a scripted backend and on a tiny model (with
the shared-prefix batching), and evaluation against gold labels."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from constitutional.backends import Backend, Completion
from constitutional.errors import UserError
from constitutional.rbr import (
    Grader,
    RbrModel,
    evaluate,
    features,
    fit_weights,
    load_propositions,
    load_rbr,
    load_replies,
    p_yes,
    pairwise_accuracy,
)
from constitutional.rbr.evaluate import gold_ranks, split
from constitutional.rbr.grader import NO, YES, question_messages

MINI = """\
name: mini
grades: [good, meh, bad]
propositions:
  - id: apology
    question: Does it apologise?
  - id: refusal
    question: Does it refuse?
rules:
  refuse:
    - grade: good
      when: {apology: true, refusal: true}
    - grade: meh
      when: {refusal: true}
  comply:
    - grade: good
      when: {refusal: false}
"""


def write(path, text):
    path.write_text(text)
    return path


# -- the propositions file -----------------------------------------------------------------------


def test_default_file_loads_and_grades_gold_labels():
    props = load_propositions("default")
    assert props.classes == ["hard_refuse", "soft_refuse", "comply"] and props.grades[0] == "ideal"
    gold = load_replies("builtin:rbr_test", props, gold=True)
    assert len(gold) == 167  # every gold row labels every proposition the rules use
    grades = {props.grade(r.response_class, r.labels) for r in gold}
    assert {"ideal", "unacceptable", "disallowed"} <= grades


def test_rules_first_match_and_worst_grade_fallback(tmp_path):
    props = load_propositions(write(tmp_path / "mini.yaml", MINI))
    assert props.grade("refuse", {"apology": True, "refusal": True}) == "good"
    assert props.grade("refuse", {"apology": False, "refusal": True}) == "meh"
    assert props.grade("refuse", {"apology": True, "refusal": False}) == "bad"  # no rule: worst
    assert props.grade("comply", {"apology": True, "refusal": False}) == "good"
    assert [props.rank(g) for g in props.grades] == [0, 1, 2]
    # The hash follows content, not formatting.
    again = load_propositions(
        write(
            tmp_path / "again.yaml",
            "# a comment\n"
            + MINI.replace("{apology: true, refusal: true}", "{refusal: true, apology: true}"),
        )
    )
    assert again.hash == props.hash


@pytest.mark.parametrize(
    "edit, line, message",
    [
        (
            ("  - id: refusal\n", "  - id: apology\n"),
            6,
            "duplicate 'apology' (first used on line 4)",
        ),
        (
            ("when: {refusal: true}\n  comply", "when: {refusals: true}\n  comply"),
            13,
            "unknown proposition 'refusals'",
        ),
        (("    - grade: meh", "    - grade: fine"), 12, "unknown grade 'fine'"),
        (("name: mini", "name: mini\ncolour: red"), 2, "unknown key 'colour'"),
        (("    question: Does it refuse?", "    question:"), 7, "must not be empty"),
        (("  - id: apology", "  - id: Apology!"), 4, "is not allowed here"),
    ],
)
def test_yaml_errors_name_file_and_line(tmp_path, edit, line, message):
    path = write(tmp_path / "bad.yaml", MINI.replace(*edit))
    with pytest.raises(UserError) as err:
        load_propositions(path)
    assert str(err.value).startswith(f"{path}:{line}: ") and message in str(err.value)


def test_gold_rows_are_checked_with_their_line(tmp_path):
    props = load_propositions(write(tmp_path / "mini.yaml", MINI))
    good = {
        "conversation": [{"role": "user", "content": "hi"}],
        "response": "no",
        "response_class": "refuse",
        "labels": {"apology": False, "refusal": True},
    }
    for row, message in [
        ({**good, "labels": {"apology": False}}, "labels lack refusal"),
        ({**good, "response_class": "maybe"}, "response_class must be one of refuse, comply"),
        ({**good, "response": 3}, "`response` must be a string"),
        ({k: v for k, v in good.items() if k != "conversation"}, "needs `conversation`"),
    ]:
        path = write(tmp_path / "gold.jsonl", json.dumps(good) + "\n" + json.dumps(row) + "\n")
        with pytest.raises(UserError, match=message) as err:
            load_replies(path, props, gold=True)
        assert str(err.value).startswith(f"{path}:2: ")
    # Rows to score need no labels; a default class fills a missing one.
    path = write(tmp_path / "score.jsonl", json.dumps({"prompt": "hi", "response": "hello"}) + "\n")
    [reply] = load_replies(path, props, gold=False, default_class="comply")
    assert reply.response_class == "comply" and reply.conversation == "hi"


# -- arithmetic by hand --------------------------------------------------------------------------


def test_p_yes_by_hand():
    lp = [
        math.log(0.3),
        math.log(0.1),
        -math.inf,
        -math.inf,
        math.log(0.2),
        -math.inf,
        -math.inf,
        -math.inf,
    ]
    assert p_yes(lp) == pytest.approx(0.4 / 0.6)  # (.3 + .1) / (.3 + .1 + .2)
    assert p_yes([-1e4] + [-math.inf] * 7) == 1.0  # no underflow far down the tail
    assert p_yes([-math.inf] * 4 + [0.0] * 4) == 0.0
    assert math.isnan(p_yes([-math.inf] * 8))


def test_features_are_propositions_then_rule_products(tmp_path):
    props = load_propositions(write(tmp_path / "mini.yaml", MINI))
    probs = np.array([[0.5, 0.8], [0.0, 1.0]])  # columns: apology, refusal
    # refuse rules: apology∧refusal = .5·.8 = .4; refusal = .8.
    assert features(props, "refuse", probs) == pytest.approx(
        np.array([[0.5, 0.8, 0.4, 0.8], [0.0, 1.0, 0.0, 1.0]])
    )
    # comply's one rule wants refusal false: 1 - .8 = .2.
    assert features(props, "comply", probs)[:, 2] == pytest.approx([0.2, 0.0])


def test_pairwise_accuracy_by_hand():
    assert pairwise_accuracy([3, 2, 1], [0, 1, 2]) == (1.0, 3)
    assert pairwise_accuracy([1, 2, 3], [0, 1, 2]) == (0.0, 3)
    assert pairwise_accuracy([1, 1, 0], [0, 1, 2]) == (2.5 / 3, 3)  # the tie counts half
    assert pairwise_accuracy([5, 1, 2], [0, 1, 1], best_only=True) == (1.0, 2)  # 1 vs 2 is no pair
    acc, n = pairwise_accuracy([1, 2], [1, 1], best_only=True)
    assert n == 0 and math.isnan(acc)


def test_fit_recovers_planted_weights():
    """Replies whose grade is a binned linear utility of synthetic proposition probabilities:
    the fitted weights point the same way as the planted ones and rank new replies correctly."""
    rng = np.random.default_rng(0)
    planted = np.array([2.0, -1.5, 0.5, 0.0, 3.0])

    def sample(n):
        x = rng.random((n, len(planted)))
        utility = x @ planted
        ranks = 3 - np.digitize(
            utility, np.quantile(utility, [0.25, 0.5, 0.75])
        )  # 0 best .. 3 worst
        return x, ranks

    x, ranks = sample(250)
    w = fit_weights(x, ranks, c=100.0, seed=0)
    cosine = w @ planted / (np.linalg.norm(w) * np.linalg.norm(planted))
    assert cosine > 0.98, (w, cosine)
    assert np.sign(w[[0, 1, 2, 4]]).tolist() == [1, -1, 1, 1] and abs(w[3]) < 0.1 * np.linalg.norm(
        w
    )
    x_new, ranks_new = sample(200)
    assert pairwise_accuracy(x_new @ w, ranks_new)[0] > 0.95
    assert pairwise_accuracy(x_new @ -w, ranks_new)[0] < 0.05  # the test can fail: sign matters
    assert fit_weights(x[:5], [1] * 5) is None  # one grade only: nothing to learn


# -- the grader ----------------------------------------------------------------------------------


class ScriptedGrader:
    """A Backend (no `render`, like a server) that answers each question with the truth value
    `answer(proposition_id, reply)`, or gives no yes/no mass at all when that returns None."""

    name, model = "scripted", "scripted-grader"

    def __init__(self, props, answer):
        self.by_question = {p.question: p.id for p in props.propositions}
        self.answer, self.asked = answer, []

    def fingerprint(self) -> str:
        return "scripted-grader"

    def generate(self, requests, on_result=None):
        return [Completion("", "stop", 0, 0) for _ in requests]

    def choice_logprobs(self, prompts, choices):
        assert list(choices) == [*YES, *NO]
        self.asked += prompts
        rows = []
        for [message] in prompts:
            text = message["content"]
            reply = text.split("<final_reply>\n", 1)[1].split("\n</final_reply>", 1)[0]
            question = text.split("Question about the final reply: ", 1)[1].split("\n", 1)[0]
            truth = self.answer(self.by_question[question], reply)
            yes, no = (0.0, -math.inf) if truth else (-math.inf, 0.0)
            rows.append(
                [-math.inf] * 8 if truth is None else [yes, *[-math.inf] * 3, no, *[-math.inf] * 3]
            )
        return rows


def test_grader_asks_every_question_reply_major(tmp_path):
    props = load_propositions(write(tmp_path / "mini.yaml", MINI))
    answer = lambda pid, reply: None if reply == "???" else (pid == "apology") == ("sorry" in reply)
    backend = ScriptedGrader(props, answer)
    assert isinstance(backend, Backend)
    grader = Grader(backend, props)
    probs = grader(["Help me.", [{"role": "user", "content": "Hi"}]], ["I'm sorry, no.", "???"])
    # "sorry" → apology yes, and the scripted refusal answer is "not (sorry)" → no.
    assert probs.tolist() == [[1.0, 0.0], [0.5, 0.5]] and grader.unscored == 2
    texts = [m[0]["content"] for m in backend.asked]
    assert len(texts) == 4 and "I'm sorry, no." in texts[0] and "I'm sorry, no." in texts[1]
    # The two questions about one reply differ only after the question marker: a long shared prefix.
    cut = texts[0].index("Question about the final reply:")
    assert texts[0][:cut] == texts[1][:cut] and texts[0][cut:] != texts[1][cut:]
    assert "User: Help me." in texts[0] and "User: Hi" in texts[2]


def test_grader_on_a_tiny_model_matches_one_question_at_a_time(tiny_model_dir):
    """Batched with the shared conversation prefilled once, each P(yes) equals the one read from
    that question alone."""
    from constitutional.backends.local import LocalBackend, shared_prefix_len

    props = load_propositions("default")
    local = LocalBackend(str(tiny_model_dir), batch_size=len(props.ids))
    replies = load_replies("builtin:rbr_test", props, gold=True, limit=2)
    probs = Grader(local, props)([r.conversation for r in replies], [r.response for r in replies])
    assert probs.shape == (2, len(props.ids)) and ((probs > 0) & (probs < 1)).all()
    asks = [
        question_messages(replies[1].conversation, replies[1].response, p.question)
        for p in props.propositions
    ]
    ids = local._encode([local.render(a) for a in asks])
    assert shared_prefix_len(ids) > 200  # the conversation and reply are shared by the batch
    for k in (0, 7, len(props.ids) - 1):
        [row] = local.choice_logprobs([asks[k]], [*YES, *NO])
        assert probs[1, k] == pytest.approx(p_yes(row), abs=1e-4)


# -- fitting and evaluating on gold labels -------------------------------------------------------


def test_perfect_grader_on_gold_data():
    """A grader that answers with the human labels: proposition accuracy 1, and the fitted
    reward ranks held-out replies as well as a fit on the labels themselves."""
    props = load_propositions("default")
    replies = load_replies("builtin:rbr_train", props, gold=True, limit=150, seed=1)
    truth = np.array([[float(r.labels[n]) for n in props.ids] for r in replies])
    train, test = split(replies, 0.3, seed=0)
    assert sorted(train + test) == list(range(150)) and 35 <= len(test) <= 55
    model, m = evaluate(
        props,
        "default",
        [replies[i] for i in train],
        [replies[i] for i in test],
        truth[train],
        truth[test],
    )
    assert m["proposition_accuracy_mean"] == 1.0 and m["proposition_auc_mean"] == 1.0
    assert model.weights and all(
        len(w) == len(props.ids) + len(props.rules[c]) for c, w in model.weights.items()
    )
    rank = m["ranking"]["all"]["pairs"]
    assert rank["n"] > 100 and rank["accuracy"] > 0.9
    assert rank["accuracy"] == pytest.approx(m["ranking_with_gold_labels"]["pairs"]["accuracy"])
    assert len(set(gold_ranks(props, replies))) >= 4  # several grades to order, not just two


def test_model_save_load_and_stale_propositions(tmp_path):
    path = write(tmp_path / "mini.yaml", MINI)
    props = load_propositions(path)
    model = RbrModel(props, str(path), {"refuse": [1.0, 2.0, 3.0, 4.0]})
    model.save(tmp_path / "rbr.json")
    loaded = load_rbr(tmp_path / "rbr.json")
    probs = np.array([[0.5, 0.8]])
    assert loaded.score("refuse", probs) == pytest.approx([0.5 + 1.6 + 1.2 + 3.2])
    assert loaded.score("comply", probs) == pytest.approx(
        [0.2]
    )  # no weights: its best rule's probability
    write(path, MINI.replace("Does it refuse?", "Does it say no?"))
    with pytest.raises(UserError, match="changed since these weights were fitted"):
        load_rbr(tmp_path / "rbr.json")
    with pytest.raises(UserError, match="not a fitted RBR"):
        load_rbr(write(tmp_path / "other.json", "{}"))
