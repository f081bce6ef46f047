"""`cai collective serve` end to end: the real server on a free port, people in headless Chromium.

The admin creates a conversation; two participants vote and one submits a statement; the admin
accepts it; both vote on it; two more participants join, so the analysis has enough people
(it needs 3); the results page shows two opinion groups. A screenshot of each page is saved
under $CAI_TEST_ARTIFACTS (default: the test's tmp dir) for a human to look at.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import headless_chromium
from test_collective_web import TOKEN

SEEDS = [
    "Assistants should refuse to help build weapons.",
    "Assistants should say when they are unsure.",
    "Assistants should never discuss politics.",
    "Assistants should put the user's wishes first.",
]
NEW = "Assistants should explain why they refuse."


@pytest.fixture
def server(tmp_path):
    """`cai collective serve` in a subprocess (the admin token in its environment); yields its URL."""
    pytest.importorskip("sqlalchemy")
    pytest.importorskip("multipart")
    from test_collective_web import running_server

    log = tmp_path / "serve.log"
    with running_server(tmp_path / "collective.sqlite", log, "--min-votes", 3) as base:
        assert f"participants at {base}/" in log.read_text()
        yield base


def vote_all(page, base: str, choice: str) -> int:
    """Vote `choice` on every statement this participant has not seen; returns how many."""
    page.goto(f"{base}/c/1")
    n = 0
    while page.locator("#statement").count():
        page.locator(f"#statement button.{choice}").click()
        page.wait_for_load_state()
        n += 1
    assert page.locator("#done").is_visible()
    return n


def test_conversation_in_headless_chromium(server, tmp_path):
    base = server
    shots = Path(os.environ.get("CAI_TEST_ARTIFACTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    foreign, errors = [], []
    with headless_chromium() as browser:

        def person():
            page = browser.new_context().new_page()  # a context each: separate cookies
            page.on("request", lambda r: None if r.url.startswith(base) else foreign.append(r.url))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            return page

        admin = person()
        admin.goto(f"{base}/admin")
        admin.fill("input[name=token]", TOKEN)
        admin.click("#login button")
        assert admin.url == f"{base}/admin" and admin.locator("#logout").count() == 1
        admin.fill("input[name=topic]", "How should AI assistants behave?")
        admin.fill("textarea[name=seeds]", "\n".join(SEEDS))
        admin.click("#new-conversation button")
        assert admin.url == f"{base}/admin/c/1"

        alice, bob = person(), person()
        assert vote_all(alice, base, "agree") == len(SEEDS)
        assert vote_all(bob, base, "disagree") == len(SEEDS)
        alice.fill("textarea[name=text]", NEW)
        alice.click("text=Submit for moderation")
        assert alice.locator("#submitted").is_visible()

        admin.goto(f"{base}/admin/c/1")
        assert NEW in admin.locator("#moderation").inner_text()
        admin.locator("#moderation button.agree").click()
        assert "Nothing to moderate" in admin.locator("#moderation").inner_text()
        assert vote_all(alice, base, "agree") == 1 and vote_all(bob, base, "disagree") == 1
        carol = person()
        carol.goto(f"{base}/c/1")
        carol.screenshot(
            path=shots / "collective-vote.png", full_page=True
        )  # a statement to vote on
        assert vote_all(carol, base, "agree") == len(SEEDS) + 1
        assert vote_all(person(), base, "disagree") == len(SEEDS) + 1
        assert "voted on 5 of 5" in alice.locator("#progress").inner_text()

        results = person()
        results.goto(f"{base}/c/1/results")
        assert (
            results.locator("#origins").inner_text()
            == "Participants who voted: 0 by invite, 4 anonymously."
        )
        for plot in ("map", "agreement"):
            box = results.locator(f"figure[data-plot={plot}] > svg").bounding_box()
            assert box and box["width"] > 150 and box["height"] > 80, plot
        assert results.locator("h3.group").all_inner_texts() == [
            "Group A (2 participants)",
            "Group B (2 participants)",
        ]
        assert (
            NEW in results.locator("#divisive").inner_text()
        )  # the two camps split on every statement
        results.screenshot(path=shots / "collective-results.png", full_page=True)
    assert errors == [] and foreign == []
    assert (shots / "collective-results.png").stat().st_size > 10_000
