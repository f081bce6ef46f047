"""The system-prompt baseline: the constitution's text reaches the model in every chat request."""

from __future__ import annotations

from constitutional.backends import Completion, GenerationRequest
from constitutional.backends.system_prompt import SystemPromptBackend
from constitutional.constitution import load_constitution
from constitutional.constitution.system_prompt import system_prompt


class Recorder:
    """Remembers what reached the model."""

    name, model = "fake", "fake-model"

    def __init__(self):
        self.requests, self.prompts, self.usage = [], [], "the inner meter"

    def fingerprint(self) -> str:
        return "fake"

    def generate(self, requests, on_result=None):
        self.requests += list(requests)
        return [Completion("ok", "stop", 1, 1) for _ in requests]

    def choice_logprobs(self, prompts, choices):
        self.prompts += list(prompts)
        return [[-1.0] * len(choices) for _ in prompts]


def test_system_prompt_lists_every_comparison_principle():
    rules = load_constitution()
    text = system_prompt(rules)
    assert all(p.text in text for p in rules.comparison)


def test_every_chat_request_carries_the_constitution():
    rules = load_constitution()
    inner = Recorder()
    model = SystemPromptBackend(inner, system_prompt(rules))
    model.generate(
        [
            GenerationRequest(messages=[{"role": "user", "content": "hi"}]),
            GenerationRequest(
                messages=[
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "x"},
                ]
            ),
            GenerationRequest(prompt="raw text"),
        ]
    )
    first, second, raw = inner.requests
    assert first.messages[0] == {"role": "system", "content": system_prompt(rules)}
    assert first.messages[1:] == [{"role": "user", "content": "hi"}]
    assert (
        second.messages[0]["content"].startswith(system_prompt(rules))
        and "Be brief." in second.messages[0]["content"]
    )
    assert len(second.messages) == 2 and raw.prompt == "raw text" and raw.messages is None
    model.choice_logprobs([[{"role": "user", "content": "q"}]], ["A", "B"])
    assert inner.prompts[0][0]["content"] == system_prompt(rules)
    assert model.usage == "the inner meter" and model.model == "fake-model+system"


def test_eval_builds_the_baseline_on_the_same_loaded_model():
    from constitutional.eval.run import build_models

    made = []

    def make(spec):
        made.append(spec)
        return Recorder()

    built = build_models(["m", "m+constitution", "judge", "m"], make, load_constitution())
    assert made == ["m", "judge"]  # the baseline loads nothing of its own
    assert (
        isinstance(built["m+constitution"], SystemPromptBackend)
        and built["m+constitution"].inner is built["m"]
    )
