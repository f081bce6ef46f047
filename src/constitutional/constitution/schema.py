"""The constitution schema: pydantic v2 models, strict about unknown keys and empty text."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from constitutional.constitution.canonical import canonical_hash, to_yaml_text
from constitutional.yamlfile import LocatedValueError

SLUG_PATTERN = r"^[a-z0-9][a-z0-9_.-]*$"

# Whitespace around text is never meaningful, so it is stripped before the emptiness check and
# before hashing: re-indenting a block scalar must not change the hash.
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
Slug = Annotated[str, StringConstraints(strip_whitespace=True, max_length=64, pattern=SLUG_PATTERN)]
Version = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, max_length=64, pattern=r"^[0-9A-Za-z][0-9A-Za-z.+_-]*$"
    ),
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GroupSupport(_Model):
    """How one opinion group voted on a source statement."""

    group: int = Field(ge=0)
    p_agree: float = Field(ge=0, le=1, description="smoothed (agree + 1) / (votes + 2)")
    votes: int = Field(ge=0)
    agree: int = Field(ge=0)
    disagree: int = Field(ge=0)


class SourceStatement(_Model):
    """A statement from public input that a principle was written from, with its support."""

    id: Text
    text: Text
    consensus: float = Field(ge=0, le=1, description="product of the groups' p_agree")
    groups: list[GroupSupport] = Field(min_length=1)


class Provenance(_Model):
    """Where a principle came from (e.g. `cai collective to-constitution`) and how it was drafted."""

    source: Text
    drafted_by: Literal["template", "model"]
    model: str | None = None  # backend:model when drafted_by is "model"
    fallback: str | None = None  # why a model draft was replaced by the template
    statements: list[SourceStatement] = Field(min_length=1)


# Optional and left out of dumps when absent, so constitutions without provenance keep the
# canonical JSON, and therefore the hash, they had before the field existed.
OptionalProvenance = Annotated[Provenance | None, Field(exclude_if=lambda v: v is None)]


class CritiqueRevision(_Model):
    """One principle for SL-CAI: ask for a critique, then for a revision that answers it."""

    id: Slug
    critique: Text
    revision: Text
    provenance: OptionalProvenance = None


class ComparisonPrinciple(_Model):
    """One principle for RL-CAI's AI feedback, phrased as a question choosing between responses."""

    id: Slug
    text: Text
    provenance: OptionalProvenance = None


class CritiqueRevisionExample(_Model):
    """A worked critique/revision exemplar shown to the model before the real request."""

    prompt: Text
    response: Text
    principle: Slug = Field(description="id of a critique_revision principle")
    critique: Text
    revision: Text


class ComparisonExample(_Model):
    """A worked comparison exemplar: step-by-step reasoning, then the preferred answer."""

    prompt: Text
    response_a: Text
    response_b: Text
    principle: Slug = Field(description="id of a comparison principle")
    reasoning: Text
    answer: Literal["A", "B"]


class FewShot(_Model):
    """Exemplars for both stages; either list may be empty."""

    critique_revision: list[CritiqueRevisionExample] = []
    comparison: list[ComparisonExample] = []


class Category(_Model):
    """A topic description for classifiers and guards, with optional example user messages
    (`cai guard synth` starts its query lists with them)."""

    id: Slug
    description: Text
    examples: list[Text] = []


class Categories(_Model):
    """Harmful and harmless topics, described in prose."""

    harmful: list[Category] = []
    harmless: list[Category] = []


class Constitution(_Model):
    """A validated constitution. Load one with `load_constitution`."""

    name: Text
    version: Version
    description: Text
    critique_revision: list[CritiqueRevision] = Field(min_length=1)
    comparison: list[ComparisonPrinciple] = Field(min_length=1)
    fewshot: FewShot = FewShot()
    categories: Categories = Categories()
    metadata: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check_ids(self) -> Constitution:
        for section, items in self._sections().items():
            _check_unique(section, items)
        _check_refs(self)
        return self

    def _sections(self) -> dict[str, list[Any]]:
        return {
            "critique_revision": self.critique_revision,
            "comparison": self.comparison,
            "categories.harmful": self.categories.harmful,
            "categories.harmless": self.categories.harmless,
        }

    @property
    def hash(self) -> str:
        """sha256 hex of the canonical JSON form: formatting, comments and key order don't count."""
        return canonical_hash(self)

    @property
    def short_hash(self) -> str:
        """The first 12 hex characters of `hash`, for logs and manifests."""
        return self.hash[:12]

    def pair(self, principle_id: str) -> CritiqueRevision:
        """The critique/revision principle with this id (KeyError if none)."""
        return _by_id(self.critique_revision, principle_id, "critique/revision principle")

    def comparison_principle(self, principle_id: str) -> ComparisonPrinciple:
        """The comparison principle with this id (KeyError if none)."""
        return _by_id(self.comparison, principle_id, "comparison principle")

    def to_yaml(self) -> str:
        """This constitution as YAML text that loads back to an equal model (same hash)."""
        return to_yaml_text(self.model_dump(mode="json", exclude_none=True))


def _by_id(items: list[Any], principle_id: str, what: str) -> Any:
    for item in items:
        if item.id == principle_id:
            return item
    raise KeyError(f"no {what} with id {principle_id!r}")


def _split(section: str) -> tuple[str, ...]:
    return tuple(section.split("."))


def _check_unique(section: str, items: list[Any]) -> None:
    first: dict[str, int] = {}
    for index, item in enumerate(items):
        if item.id in first:
            raise LocatedValueError(
                (*_split(section), index, "id"),
                f"duplicate id {item.id!r} in {section}",
                first_loc=(*_split(section), first[item.id], "id"),
            )
        first[item.id] = index


def _check_refs(c: Constitution) -> None:
    # Exemplars name their principle by id; a typo would silently pair an exemplar with nothing.
    for kind, examples, known in (
        ("critique_revision", c.fewshot.critique_revision, {p.id for p in c.critique_revision}),
        ("comparison", c.fewshot.comparison, {p.id for p in c.comparison}),
    ):
        for index, example in enumerate(examples):
            if example.principle not in known:
                raise LocatedValueError(
                    ("fewshot", kind, index, "principle"),
                    f"unknown {kind} principle {example.principle!r}",
                )
