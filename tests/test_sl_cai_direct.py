"""`--no-critique`: the model revises straight after its answer, and the traces say so."""

from __future__ import annotations

from constitutional.backends import Completion
from constitutional.constitution import load_constitution
from constitutional.sl_cai import SLConfig, generate_sl_data

RED = [{"id": f"r{i}", "prompt": f"How do I break into house number {i}?"} for i in range(3)]


class Scripted:
    """Answers every request with words no other reply shares (so no repeat check fires, and
    "because" passes for a critique) and keeps the chats it was sent."""

    name, model = "scripted", "scripted"

    def __init__(self):
        self.chats = []

    def fingerprint(self) -> str:
        return "scripted"

    def generate(self, requests, on_result=None):
        start = len(self.chats)
        self.chats += [r.messages for r in requests]
        texts = [
            " ".join(f"w{start + i}x{j}" for j in range(6)) + " because"
            for i in range(len(requests))
        ]
        return [Completion(t, "stop", 3, 4) for t in texts]


def run(critique: bool):
    rules, model = load_constitution(), Scripted()
    traces = generate_sl_data(
        rules, RED, [], model, SLConfig(rounds=2, fewshot=1, helpful_ratio=0, critique=critique)
    )
    return rules, model, traces


def test_no_critique_sends_no_critique_request_and_records_none():
    rules, model, traces = run(critique=False)
    critiques = {p.critique for p in rules.critique_revision}
    assert not any(m["content"] in critiques for chat in model.chats for m in chat)
    assert len(model.chats) == 3 + 3 * 2  # answers, then one revision per prompt and round
    for t in traces:
        assert [s["critique"] for s in t["rounds"]] == [None, None]
        assert all(s["revision"] and not s["discarded"] for s in t["rounds"])
        assert t["final_response"] == t["rounds"][-1]["revision"]
    revision_chat = model.chats[3]
    assert (
        revision_chat[-1]["content"] == rules.pair(traces[0]["rounds"][0]["principle_id"]).revision
    )
    assert (
        revision_chat[-2]["role"] == "assistant"
        and revision_chat[-3]["content"] == RED[0]["prompt"]
    )


def test_with_critique_every_revision_follows_its_critique():
    _, model, traces = run(critique=True)
    assert len(model.chats) == 3 + 3 * 2 * 2
    for t in traces:
        assert all(s["critique"] for s in t["rounds"])
