"""Detect critiques and revisions that failed, so they are kept with a reason, never used.

Small models often answer a critique request by continuing or repeating the harmful answer, or
by saying nothing useful; and they sometimes "revise" by copying the old text or the critique.
These checks are deliberately simple and explainable; each returns a reason or None.
"""

from __future__ import annotations

import re

from constitutional.text import looping, overlap, words

MIN_WORDS = 5
REPEAT_OVERLAP = 0.6  # share of the text's word 4-grams found in the other text
CRITIQUE_COPY_N = (
    3  # word n-grams compared between a revision and its critique (see revision_problem)
)
CRITIQUE_COPY = 0.5  # share of the revision's n-grams found in the critique: "most of it" is a copy
# A revision must be the assistant's next reply to the user. Small models often write *about*
# that reply instead ("The provided response seems to ...", "the assistant should ..."); trained
# on as an answer, such text teaches the model to comment on answers rather than give them.
META_TALK = re.compile(
    r"\b(?:the|this|that)\s+(?:(?:provided|original|previous|initial|given|above|first|last|earlier|revised|"
    r"rewritten|new|improved|assistant'?s|ai'?s|model'?s)\s+)*(?:response|reply)\b"
    r"|\boriginal\s+(?:response|reply)\b"
    r"|\bthe\s+(?:ai\s+)?assistant\b"
    r"|\b(?:the|this)\s+(?:user|human)'?s\s+(?:request|question|query|prompt|message)\b"
    r"|\bhere(?:\s+is|'s)\s+(?:a|the|my)\s+(?:revised|rewritten|revision|improved|new\s+version)\b",
    re.IGNORECASE,
)
CRITIQUE_WORDS = re.compile(
    r"\b(response|reply|answer|assistant|harm\w*|unsafe|danger\w*|illegal|unethical|wrong|"
    r"problem\w*|should(n't)?|could|instead|because|inappropriate|risk\w*|fine|acceptable)\b",
    re.IGNORECASE,
)


def critique_problem(critique: str, response: str) -> str | None:
    """Why `critique` is not a critique of `response`, or None if it looks like one."""
    if len(words(critique)) < MIN_WORDS:
        return "empty or too short"
    if looping(critique):
        return "degenerate: repeats itself"
    if overlap(critique, response) >= REPEAT_OVERLAP:
        return "repeats or continues the response instead of critiquing it"
    if not CRITIQUE_WORDS.search(critique):
        return "does not address the response"
    return None


def revision_problem(revision: str, previous: str, critique: str) -> str | None:
    """Why `revision` failed to revise `previous` in light of `critique`, or None.

    A copy of the critique is judged on word 3-grams, not the 4-grams used for a critique that
    continues the response: a model that rewrites the critique rephrases it a little ("In this
    scenario, there's a concern that ..."), which breaks more 4-grams than 3-grams, while 2-grams
    ("of the", "it is") are shared by any two texts on one topic. Half of the revision's 3-grams
    coming from the critique means most of the revision is the critique.
    """
    if len(words(revision)) < MIN_WORDS:
        return "empty or too short"
    if looping(revision):
        return "degenerate: repeats itself"
    if revision.strip() == previous.strip():
        return "identical to the response it should revise"
    if overlap(revision, critique, CRITIQUE_COPY_N) >= CRITIQUE_COPY:
        return "repeats the critique instead of rewriting the response"
    if META_TALK.search(revision):
        return "talks about the response instead of answering the user"
    return None
