"""The propositions and rules of a rule-based reward, as a validated YAML file.

Rule-based rewards (Mu et al. 2024, https://arxiv.org/abs/2411.01111): a grader answers simple
yes/no propositions about a reply ("it apologises", "it judges the user"), and rules say which
combination of answers makes a reply ideal for each kind of request (hard refusal, soft refusal,
comply). See default.yaml for the shipped set.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from constitutional.yamlfile import LocatedValueError, load_yaml_model

DEFAULT = Path(__file__).with_name("default.yaml")
Id = Field(pattern=r"^[a-z][a-z0-9_]*$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Proposition(Strict):
    id: str = Id
    question: str = Field(min_length=1)


class Rule(Strict):
    """A reply earns `grade` when every proposition in `when` has the given truth value."""

    grade: str = Field(min_length=1)
    when: dict[str, bool] = Field(default_factory=dict)


class Propositions(Strict):
    """A whole RBR file: propositions to grade, grades best first, rules per response class."""

    name: str = Field(min_length=1)
    version: str = "1.0.0"
    description: str = ""
    grades: list[str] = Field(min_length=2)
    propositions: list[Proposition] = Field(min_length=1)
    rules: dict[str, list[Rule]] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Propositions:
        _no_duplicates(self.grades, lambda i: ("grades", i))
        _no_duplicates([p.id for p in self.propositions], lambda i: ("propositions", i, "id"))
        known = set(self.ids)
        for cls, rules in self.rules.items():
            if not rules:
                raise LocatedValueError(("rules", cls), "needs at least one rule")
            for i, rule in enumerate(rules):
                if rule.grade not in self.grades:
                    raise LocatedValueError(
                        ("rules", cls, i, "grade"),
                        f"unknown grade {rule.grade!r} (grades: {', '.join(self.grades)})",
                    )
                for name in rule.when:
                    if name not in known:
                        raise LocatedValueError(
                            ("rules", cls, i, "when", name), f"unknown proposition {name!r}"
                        )
        return self

    @property
    def ids(self) -> list[str]:
        return [p.id for p in self.propositions]

    @property
    def classes(self) -> list[str]:
        return list(self.rules)

    @property
    def hash(self) -> str:
        """sha256 of the content (not the formatting): fitted weights record which file they fit."""
        canonical = json.dumps(self.model_dump(), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def grade(self, cls: str, truth: dict[str, bool]) -> str:
        """The grade of a reply to a `cls` request whose propositions have these truth values."""
        for rule in self.rules[cls]:
            if all(truth[name] == want for name, want in rule.when.items()):
                return rule.grade
        return self.grades[-1]

    def rank(self, grade: str) -> int:
        """0 for the best grade, larger is worse."""
        return self.grades.index(grade)


def _no_duplicates(values: list[str], loc) -> None:
    first: dict[str, int] = {}
    for i, value in enumerate(values):
        if value in first:
            raise LocatedValueError(loc(i), f"duplicate {value!r}", first_loc=loc(first[value]))
        first[value] = i


def load_propositions(path: str | Path = "default") -> Propositions:
    """Read and validate an RBR YAML ("default" for the shipped one); errors are FILE:LINE."""
    source = DEFAULT if str(path) == "default" else Path(path)
    return load_yaml_model(source, Propositions, "RBR propositions and rules")
