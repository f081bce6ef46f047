"""`cai collective serve`: the voting web app, driven in-process through FastAPI's TestClient.

Each `Visitor` is its own TestClient, so it has its own cookie jar: its own participant.
The browser test (a real server, headless Chromium) is tests/test_collective_browser.py.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy")
pytest.importorskip("multipart")  # python-multipart: FastAPI's form parser
from fastapi.testclient import TestClient
from helpers import CAI, cai
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError

from constitutional.cli.collective import run_analyze
from constitutional.collective.web import Store, create_app, open_engine
from constitutional.collective.web.limits import Limits, Rate, SlidingWindow, parse_rate
from constitutional.collective.web.results import results
from constitutional.collective.web.security import new_token
from constitutional.collective.web.store import Base, Participant, Vote, order_key
from constitutional.errors import UserError

TOKEN = "admin-token-for-tests-0123456789"
SEEDS = [
    "Models should refuse to help with weapons.",
    "Models should admit uncertainty.",
    "Models should never give medical advice.",
    "Models should follow local laws.",
    "Models should be allowed to write fiction with violence.",
    "Models should cite sources.",
]


class Visitor:
    """One browser: its own cookies, forms posted with the CSRF token read from the page."""

    def __init__(self, app, admin: bool = False, ip: str = "testclient"):
        self.client = TestClient(app, follow_redirects=False, client=(ip, 50000))
        if admin:
            assert self.post("/admin/login", "/admin", token=TOKEN).status_code == 303

    def csrf(self, page: str) -> str:
        return re.search(r'name="csrf" value="([0-9a-f]+)"', self.client.get(page).text)[1]

    def post(self, path: str, form_page: str, **data):
        return self.client.post(path, data={"csrf": self.csrf(form_page), **data})

    def current(self, cid: int) -> int | None:
        """The id of the statement this visitor is asked to vote on next."""
        found = re.search(r'data-statement="(\d+)"', self.client.get(f"/c/{cid}").text)
        return int(found[1]) if found else None

    def vote(self, cid: int, statement: int, choice: str):
        return self.post(f"/c/{cid}/vote", f"/c/{cid}", statement=statement, choice=choice)


def make_app(url: str, **kwargs):
    store = Store(open_engine(url))
    return store, create_app(store, admin_token=TOKEN, **kwargs)


@pytest.fixture
def site(tmp_path):
    return make_app(str(tmp_path / "collective.sqlite"), min_votes=4)


def new_conversation(admin: Visitor, seeds=SEEDS) -> int:
    response = admin.post(
        "/admin/conversations",
        "/admin",
        topic="How should AI behave?",
        description="Vote on each statement.",
        seeds="\n".join(seeds),
    )
    assert response.status_code == 303
    return int(response.headers["location"].rsplit("/", 1)[1])


def vote_rows(store: Store) -> list[tuple[int, int, int]]:
    with store.session() as s:
        return [
            tuple(r) for r in s.execute(select(Vote.participant_id, Vote.statement_id, Vote.value))
        ]


def two_camps(app, cid: int, people: int = 6) -> list[Visitor]:
    """`people` participants vote on every statement: the first half agree with all, the rest disagree."""
    visitors = [Visitor(app) for _ in range(people)]
    for i, v in enumerate(visitors):
        while (sid := v.current(cid)) is not None:
            assert v.vote(cid, sid, "agree" if i < people // 2 else "disagree").status_code == 303
    return visitors


def test_revote_updates_the_one_row(site):
    store, app = site
    cid = new_conversation(Visitor(app, admin=True))
    alice = Visitor(app)
    first = alice.current(cid)
    alice.vote(cid, first, "agree")
    assert alice.current(cid) != first  # the next statement comes up
    alice.vote(cid, first, "disagree")  # e.g. the back button, then another choice
    alice.vote(cid, first, "disagree")
    assert vote_rows(store) == [(1, first, -1)]
    with (
        store.session.begin() as s,
        pytest.raises(IntegrityError),
    ):  # the database itself refuses a second row
        s.execute(insert(Vote).values(participant_id=1, statement_id=first, value=1))
    assert "You have voted on 1 of 6 statements" in alice.client.get(f"/c/{cid}").text


def racing_votes(store: Store, cid: int) -> None:
    """Eight threads cast one new participant's vote on one statement at once: one row remains."""
    from concurrent.futures import ThreadPoolExecutor

    sid = store.statements(cid)[0][0].id
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: store.vote("racing-participant-token", sid, i % 3 - 1), range(16)))
    with store.session() as s:
        mine = (
            select(Vote.value)
            .join(Participant)
            .where(Participant.token == "racing-participant-token")
        )
        assert len(s.execute(mine.where(Vote.statement_id == sid)).all()) == 1
        assert (
            s.scalar(
                select(func.count())
                .select_from(Participant)
                .where(Participant.token == "racing-participant-token")
            )
            == 1
        )


def test_racing_votes_leave_one_row(site):
    store, app = site
    racing_votes(store, new_conversation(Visitor(app, admin=True)))


def test_script_statement_is_escaped_everywhere(site):
    store, app = site
    admin = Visitor(app, admin=True)
    cid = new_conversation(admin)
    hostile = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    assert Visitor(app).post(f"/c/{cid}/statements", f"/c/{cid}", text=hostile).status_code == 303
    sid = max(st.id for st, _ in store.statements(cid))
    assert (
        admin.post(f"/admin/statements/{sid}", f"/admin/c/{cid}", decision="accept").status_code
        == 303
    )
    two_camps(app, cid)
    for page in (f"/admin/c/{cid}", f"/c/{cid}/results"):
        text = admin.client.get(page).text
        assert (
            "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;"
            in text
        ), page
        assert "<script" not in text and "<img" not in text, page
    assert (
        admin.client.get("/").headers["content-security-policy"].startswith("default-src 'none'")
    )  # no script


def test_post_without_or_with_a_foreign_csrf_token_is_refused(site):
    store, app = site
    cid = new_conversation(Visitor(app, admin=True))
    alice, mallory = Visitor(app), Visitor(app)
    sid = alice.current(cid)
    assert (
        alice.client.post(f"/c/{cid}/vote", data={"statement": sid, "choice": "agree"}).status_code
        == 403
    )
    stolen = mallory.csrf(f"/c/{cid}")  # a valid token, but for another participant
    response = alice.client.post(
        f"/c/{cid}/vote", data={"statement": sid, "choice": "agree", "csrf": stolen}
    )
    assert response.status_code == 403 and "security token" in response.text
    assert alice.client.post(f"/c/{cid}/statements", data={"text": "hello"}).status_code == 403
    assert vote_rows(store) == [] and len(store.statements(cid)) == len(SEEDS)


def test_admin_routes_need_the_token(site):
    store, app = site
    admin = Visitor(app, admin=True)
    cid = new_conversation(admin)
    bob = Visitor(app)
    bob.post(f"/c/{cid}/statements", f"/c/{cid}", text="A statement from Bob.")
    sid = max(st.id for st, _ in store.statements(cid))
    # Bob has a valid CSRF token of his own: only the admin check stands in his way.
    assert bob.post(f"/admin/statements/{sid}", f"/c/{cid}", decision="accept").status_code == 403
    assert bob.post(f"/admin/c/{cid}/state", f"/c/{cid}", state="closed").status_code == 403
    assert bob.post("/admin/conversations", f"/c/{cid}", topic="mine").status_code == 403
    for page in (f"/admin/c/{cid}", f"/admin/c/{cid}/votes.csv"):
        assert bob.client.get(page).status_code == 403, page
    assert 'action="/admin/login"' in bob.client.get("/admin").text  # only the login form
    assert (
        bob.client.get(
            f"/admin/c/{cid}/votes.csv", headers={"Authorization": f"Bearer {TOKEN}"}
        ).status_code
        == 200
    )
    assert store.statements(cid, "pending")[0][0].id == sid and store.conversation(cid).is_open


def test_request_size_limit(tmp_path):
    store, app = make_app(str(tmp_path / "c.sqlite"), max_body_bytes=2048)
    cid = new_conversation(Visitor(app, admin=True), seeds=["one"])
    alice = Visitor(app)
    token = alice.csrf(f"/c/{cid}")
    big = {"csrf": token, "text": "x" * 5000}
    assert alice.client.post(f"/c/{cid}/statements", data=big).status_code == 413

    def chunks():  # no Content-Length: the limit must hold while reading
        yield f"csrf={token}&text=".encode()
        for _ in range(10):
            yield b"y" * 1000

    assert (
        alice.client.post(
            f"/c/{cid}/statements",
            content=chunks(),
            headers={"content-type": "application/x-www-form-urlencoded"},
        ).status_code
        == 413
    )
    long = {"csrf": token, "text": "z" * 281}  # under the body limit, over the statement limit
    assert alice.client.post(f"/c/{cid}/statements", data=long).status_code == 400
    assert len(store.statements(cid)) == 1


def test_vote_order_is_per_participant_seeded_and_stable(tmp_path):
    orders = {}
    for seed in (0, 0, 1):
        store = Store(open_engine(str(tmp_path / f"{seed}-{len(orders)}.sqlite")))
        cid = store.create_conversation("t", "", [f"statement {i}" for i in range(8)], seed)
        for token in ("participant-token-aaaa", "participant-token-bbbb"):
            order = []
            while (st := store.next_statement(cid, token)[0]) is not None:
                order.append(st.id)
                store.vote(token, st.id, 0)
            orders[(seed, token, len(orders) // 2)] = order
    (a0, b0, a0_again, b0_again, a1, _) = orders.values()
    assert a0 == a0_again and b0 == b0_again  # same seed and participant: same order
    assert (
        sorted(a0) == list(range(1, 9)) and a0 != b0 and a0 != a1
    )  # a shuffle per participant and seed
    assert a0 == sorted(range(1, 9), key=lambda sid: order_key(0, "participant-token-aaaa", sid))


def test_export_feeds_analyze_and_matches_the_results_page(site, tmp_path):
    store, app = site
    admin = Visitor(app, admin=True)
    cid = new_conversation(admin)
    two_camps(app, cid)
    (tmp_path / "votes.csv").write_text(admin.client.get(f"/admin/c/{cid}/votes.csv").text)
    (tmp_path / "comments.csv").write_text(admin.client.get(f"/admin/c/{cid}/comments.csv").text)
    offline = run_analyze(tmp_path / "votes.csv", tmp_path / "comments.csv", min_votes=4)
    online = results(store, cid, min_votes=4)
    assert {k: v for k, v in online.items() if not k.endswith("_svg")} == offline
    assert (
        offline["k"] == 2
        and offline["participants"]["kept"] == 6
        and offline["statements"] == len(SEEDS)
    )
    assert offline["statement_stats"][0]["text"] == SEEDS[0]
    page = admin.client.get(f"/c/{cid}/results").text
    assert (
        page.count('class="group"') == 2
        and page.count("<svg") == 2
        and "Divisive statements" in page
    )


def test_closed_conversation_takes_no_votes(site):
    store, app = site
    admin = Visitor(app, admin=True)
    cid = new_conversation(admin)
    alice = Visitor(app)
    sid = alice.current(cid)
    token = alice.csrf(f"/c/{cid}")
    assert admin.post(f"/admin/c/{cid}/state", f"/admin/c/{cid}", state="closed").status_code == 303
    response = alice.client.post(
        f"/c/{cid}/vote", data={"csrf": token, "statement": sid, "choice": "agree"}
    )
    assert response.status_code == 409 and vote_rows(store) == []
    assert "Voting is closed" in alice.client.get(f"/c/{cid}").text


def test_invite_link_makes_this_browser_the_invited_participant(site):
    store, app = site
    admin = Visitor(app, admin=True)
    cid = new_conversation(admin)
    page = admin.post(f"/admin/c/{cid}/invites", f"/admin/c/{cid}", count=2).text
    links = re.findall(rf"http://testserver(/c/{cid}/join/[\w-]+)", page)
    assert len(links) == 2
    guest = Visitor(app)
    assert guest.client.get(links[0]).status_code == 303
    guest.vote(cid, guest.current(cid), "agree")
    assert guest.client.get(f"/c/{cid}/join/not-an-invite-token-000").status_code == 404
    assert vote_rows(store)[0][0] == 1  # the first invited participant, not a new anonymous one


def test_results_page_waits_for_enough_votes(site):
    _, app = site
    cid = new_conversation(Visitor(app, admin=True))
    assert "no votes yet" in Visitor(app).client.get(f"/c/{cid}/results").text
    two_camps(app, cid, people=2)
    assert "need 3" in Visitor(app).client.get(f"/c/{cid}/results").text


def test_cli_rejects_a_bad_database_in_one_line(tmp_path):
    with pytest.raises(UserError, match="only sqlite and postgresql"):
        open_engine("mysql://u@h/db")
    done = cai(
        "collective",
        "serve",
        "--db",
        "postgresql+psycopg://nobody:secret@127.0.0.1:1/x",
        "--admin-token",
        TOKEN,
        timeout=60,
    )
    assert done.returncode == 2 and done.stderr.startswith(
        "cai: error: --db postgresql+psycopg://nobody:***@"
    )
    assert "cannot open the database" in done.stderr and "secret" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    done = cai(
        "collective", "serve", "--db", tmp_path / "c.sqlite", "--admin-token", "short", timeout=60
    )
    assert done.returncode == 2 and "at least 16 characters" in done.stderr


def postgres_url() -> str:
    url = os.environ.get("CAI_TEST_POSTGRES_URL")
    if not url:
        pytest.skip(
            "set CAI_TEST_POSTGRES_URL=postgresql+psycopg://USER@HOST/DB to test PostgreSQL"
        )
    pytest.importorskip("psycopg", reason="PostgreSQL needs the psycopg (v3) driver")
    from sqlalchemy import create_engine, text

    try:
        with create_engine(url).connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as e:  # noqa: BLE001 (any failure to connect means: skip, saying why)
        pytest.skip(
            f"PostgreSQL at CAI_TEST_POSTGRES_URL is not reachable: {str(e).splitlines()[0]}"
        )
    return url


def test_postgresql(tmp_path):
    url = postgres_url()
    Base.metadata.drop_all(open_engine(url))  # a clean slate: this database is the test's own
    try:
        store, app = make_app(url, min_votes=4)
        admin = Visitor(app, admin=True)
        cid = new_conversation(admin)
        visitors = two_camps(app, cid)
        sid = store.statements(cid)[0][0].id
        visitors[0].vote(cid, sid, "pass")  # a re-vote: still one row, now 0
        assert sum(1 for _, s, _ in vote_rows(store) if s == sid) == 6
        with store.session() as s:
            assert s.scalar(select(func.count()).select_from(Vote)) == 6 * len(SEEDS)
        (tmp_path / "votes.csv").write_text(admin.client.get(f"/admin/c/{cid}/votes.csv").text)
        assert run_analyze(tmp_path / "votes.csv", min_votes=4)["k"] == 2
        assert admin.client.get(f"/c/{cid}/results").text.count('class="group"') == 2
        assert store.engine.dialect.name == "postgresql"
        racing_votes(store, cid)
    finally:
        Base.metadata.drop_all(open_engine(url))


# --- issue #23: ballot stuffing, formula injection, tokens in logs, huge ids, the results cache ---


def forged_cookie_refused(app, value: str) -> None:
    client = TestClient(app, follow_redirects=False, cookies={"cai_participant": value})
    for response in (
        client.get("/c/1"),
        client.post("/c/1/vote", data={"statement": 1, "choice": "agree"}),
    ):
        assert response.status_code == 403 and "not issued by this server" in response.text
        assert (
            response.headers["set-cookie"].startswith("cai_participant=;")
            and "Max-Age=0" in response.headers["set-cookie"]
        )
        assert response.headers["x-frame-options"] == "DENY"


def test_a_participant_cookie_the_server_did_not_sign_gets_403(tmp_path):
    db = str(tmp_path / "c.sqlite")
    store, app = make_app(db)
    cid = new_conversation(Visitor(app, admin=True))
    alice = Visitor(app)
    alice.vote(cid, alice.current(cid), "agree")
    cookie = alice.client.cookies["cai_participant"]
    token, _, mac = cookie.partition(".")
    assert len(mac) == 43 and store.known(
        token
    )  # the database keeps the token, the cookie adds its MAC
    forged_cookie_refused(app, "a-well-formed-token-0001")  # the attack: any token-shaped value
    forged_cookie_refused(app, f"{token}.{'A' * 43}")  # a real token with a made-up MAC
    forged_cookie_refused(
        app, cookie.replace(token, "a-well-formed-token-0002")
    )  # a MAC moved to another token
    _, restarted = make_app(
        db
    )  # the secret is kept in the database: a restart keeps the cookie valid
    assert (
        TestClient(restarted, cookies={"cai_participant": cookie}).get(f"/c/{cid}").status_code
        == 200
    )
    other = create_app(store, admin_token=TOKEN, secret="another-server-secret-0123")
    forged_cookie_refused(other, cookie)
    assert len(vote_rows(store)) == 1


def test_one_address_cannot_invent_voters_nor_flood(tmp_path):
    limits = Limits(participants=Rate(5, 3600), votes=Rate(8, 600), statements=Rate(2, 600))
    store, app = make_app(str(tmp_path / "c.sqlite"), limits=limits)
    cid = new_conversation(Visitor(app, admin=True))
    codes = []
    for _ in range(12):  # the attack: a fresh cookie for every vote
        mallory = Visitor(app, ip="203.0.113.9")
        codes.append(mallory.vote(cid, 1, "agree").status_code)
    assert codes == [303] * 5 + [429] * 7 and len(vote_rows(store)) == 5
    limited = Visitor(app, ip="203.0.113.9").vote(cid, 1, "agree")
    assert (
        3000 < int(limited.headers["retry-after"]) <= 3600
        and "too many new participants" in limited.text
    )
    assert limited.headers["content-security-policy"].startswith("default-src 'none'")
    eve = Visitor(app, ip="198.51.100.7")  # another address has its own budget
    votes = [
        eve.vote(cid, sid, choice).status_code
        for sid in (1, 2)
        for choice in ("agree", "disagree") * 2
    ]
    assert votes == [303] * 8 and eve.vote(cid, 3, "agree").status_code == 429  # re-votes count too
    said = [
        eve.post(f"/c/{cid}/statements", f"/c/{cid}", text=f"statement {i}").status_code
        for i in range(3)
    ]
    assert said == [303, 303, 429] and len(store.statements(cid, "pending")) == 2
    assert Visitor(app, ip="192.0.2.1").vote(cid, 1, "pass").status_code == 303


def test_invite_only_counts_only_invited_votes(tmp_path):
    db = str(tmp_path / "c.sqlite")
    _, app = make_app(db, min_votes=2)
    admin = Visitor(app, admin=True)
    cid = new_conversation(admin, seeds=SEEDS[:3])
    links = re.findall(
        rf"http://testserver(/c/{cid}/join/[\w-]+)",
        admin.post(f"/admin/c/{cid}/invites", f"/admin/c/{cid}", count=3).text,
    )
    for _ in range(3):  # anonymous votes cast before the switch to invite-only
        anonymous = Visitor(app)
        assert [anonymous.vote(cid, sid, "pass").status_code for sid in (1, 2)] == [303, 303]
    _, closed = make_app(db, min_votes=2, invite_only=True)
    stranger = Visitor(closed)
    assert "by invitation only" in stranger.client.get(f"/c/{cid}").text
    vote = stranger.post(
        f"/c/{cid}/vote", "/admin", statement=1, choice="agree"
    )  # a form token from /admin
    assert vote.status_code == 403 and "invitation only" in vote.text
    assert stranger.post(f"/c/{cid}/statements", "/admin", text="let me in").status_code == 403
    guests = [Visitor(closed) for _ in links]
    for guest, link, choice in zip(guests, links, ["agree", "agree", "disagree"], strict=True):
        assert guest.client.get(link).status_code == 303
        while (sid := guest.current(cid)) is not None:
            assert guest.vote(cid, sid, choice).status_code == 303
    admin = Visitor(closed, admin=True)
    assert "Invite-only: only participants" in admin.client.get(f"/admin/c/{cid}").text
    exported = admin.client.get(f"/admin/c/{cid}/votes.csv").text.splitlines()
    assert len(exported) == 1 + 3 * 3  # the header and the guests' votes, not the anonymous ones
    page = admin.client.get(f"/c/{cid}/results").text
    assert "3 by invite, 3 anonymously" in page and "only the invited participants" in page
    assert "3 of 3 participants" in page
    everyone = (
        Visitor(app).client.get(f"/c/{cid}/results").text
    )  # without invite-only, all votes count
    assert "3 by invite, 3 anonymously" in everyone and "6 of 6 participants" in everyone


def test_export_is_spreadsheet_safe_and_analyze_reads_it_back(tmp_path):
    store, app = make_app(str(tmp_path / "c.sqlite"), min_votes=2)
    hostile = [
        '=HYPERLINK("http://evil.example","click")',
        "+1+1",
        "-2+3",
        "@SUM(A1:A9)",
        "\tcmd",
        "\rcmd",
        "'quoted already",
        "plain text, with a comma",
    ]
    cid = store.create_conversation("t", "", hostile, seed=0)  # the store keeps texts as given
    for i in range(3):
        for st, _ in store.statements(cid):
            store.vote(f"participant-token-{i:05d}", st.id, -1 if i else 1)
    admin = Visitor(app, admin=True)
    comments = admin.client.get(f"/admin/c/{cid}/comments.csv").text
    cells = [row[1] for row in csv.reader(io.StringIO(comments, newline=""))][1:]
    assert cells == ["'" + text for text in hostile[:-1]] + [hostile[-1]]
    votes = admin.client.get(f"/admin/c/{cid}/votes.csv").text
    assert "p2,1,-1\r\n" in votes  # numbers stay numbers
    (tmp_path / "votes.csv").write_text(votes)
    (tmp_path / "comments.csv").write_text(comments)
    offline = run_analyze(tmp_path / "votes.csv", tmp_path / "comments.csv", min_votes=2)
    assert [
        s["text"] for s in sorted(offline["statement_stats"], key=lambda s: int(s["statement"]))
    ] == hostile


def test_admin_token_is_posted_and_the_cookie_is_a_session(site):
    _, app = site
    browser = Visitor(app)
    response = browser.client.get(f"/admin?token={TOKEN}")  # the old link logs no one in
    assert response.status_code == 200 and 'action="/admin/login"' in response.text
    assert (
        "cai_admin" not in response.headers["set-cookie"]
        and "cai_admin" not in browser.client.cookies
    )
    assert browser.post("/admin/login", "/admin", token="wrong-token-0123456789").status_code == 403
    sessions = []
    for _ in range(2):
        response = browser.post("/admin/login", "/admin", token=TOKEN)
        assert response.status_code == 303 and response.headers["location"] == "/admin"
        session = browser.client.cookies["cai_admin"]
        assert (
            TOKEN not in response.headers["set-cookie"]
            and "HttpOnly" in response.headers["set-cookie"]
        )
        sessions.append(session)
    assert len(set(sessions)) == 2 and len(sessions[0]) >= 40
    assert browser.client.get("/admin/c/1").status_code == 404  # logged in: no such conversation
    stolen = TestClient(
        app, cookies={"cai_admin": TOKEN}
    )  # the raw token as the cookie no longer works
    assert stolen.get("/admin/c/1").status_code == 403
    assert browser.post("/admin/logout", "/admin").status_code == 303
    assert TestClient(app, cookies={"cai_admin": sessions[1]}).get("/admin/c/1").status_code == 403
    odd = TestClient(app).get("/admin/c/1", headers={"Authorization": b"Bearer \xc3\xa9\xff"})
    assert odd.status_code == 403


def test_admin_login_attempts_are_limited(tmp_path):
    _, app = make_app(str(tmp_path / "c.sqlite"), limits=Limits(logins=Rate(3, 600)))
    guesser = Visitor(app, ip="203.0.113.5")
    codes = [
        guesser.post("/admin/login", "/admin", token=f"guess-{i:020d}").status_code
        for i in range(4)
    ]
    assert codes == [403, 403, 403, 429]
    assert (
        guesser.post("/admin/login", "/admin", token=TOKEN).status_code == 429
    )  # even the right one, for now


def test_huge_ids_are_404_with_security_headers(site):
    _, app = site
    admin = Visitor(app, admin=True)
    cid = new_conversation(admin)
    huge = "99999999999999999999999"
    for page in (
        f"/c/{huge}",
        f"/c/{huge}/results",
        f"/admin/c/{huge}",
        f"/admin/c/{huge}/votes.csv",
        f"/c/{huge}/join/{'a' * 24}",
        f"/c/-{huge}",
    ):
        response = admin.client.get(page)
        assert (
            response.status_code == 404 and response.headers["x-content-type-options"] == "nosniff"
        ), page
    assert (
        admin.post(f"/admin/statements/{huge}", f"/admin/c/{cid}", decision="accept").status_code
        == 404
    )
    assert admin.vote(cid, int(huge), "agree").status_code == 404


def test_a_crash_is_a_bare_500_with_security_headers(site, monkeypatch):
    store, app = site

    def broken(cid):
        raise RuntimeError("secret detail of the crash")

    monkeypatch.setattr(store, "conversation", broken)
    response = TestClient(app).get("/c/1")
    assert response.status_code == 500 and response.text == "internal server error"
    assert response.headers["content-security-policy"].startswith("default-src 'none'")


def test_results_are_computed_once_per_change_of_the_votes(site):
    store, app = site
    cid = new_conversation(Visitor(app, admin=True))
    visitors = two_camps(app, cid)
    cache = app.state.results
    pages = [Visitor(app).client.get(f"/c/{cid}/results").text for _ in range(3)]
    assert cache.computed == 1 and pages[0] == pages[2] and 'class="group"' in pages[0]
    first = cache.get(cid)
    visitors[0].vote(cid, 1, "disagree")  # a re-vote: the count of votes stays, the result changes
    changed = Visitor(app).client.get(f"/c/{cid}/results").text
    assert cache.computed == 2 and changed != pages[0]
    assert cache.get(cid) != first and cache.get(cid) == results(store, cid, min_votes=4)
    Visitor(app).client.get(f"/c/{cid}/results")
    assert cache.computed == 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(db: Path, log: Path, *args):
    """`cai collective serve` on a free port in a subprocess, output to `log`; yields its base URL."""
    import httpx

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*CAI, "collective", "serve", "--db", str(db), "--port", str(port), *map(str, args)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "CAI_ADMIN_TOKEN": TOKEN},
        )
        try:
            deadline = time.time() + 60
            while time.time() < deadline and proc.poll() is None:
                try:
                    if httpx.get(base + "/", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            assert proc.poll() is None, log.read_text()
            yield base
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def test_tokens_stay_out_of_the_server_log(tmp_path):
    import httpx

    store = Store(open_engine(str(tmp_path / "c.sqlite")))
    cid = store.create_conversation("t", "", ["one"], 0)
    invite = new_token()
    store.invite([invite])
    log = tmp_path / "serve.log"
    with running_server(tmp_path / "c.sqlite", log) as base, httpx.Client(base_url=base) as browser:
        assert browser.get(f"/admin?token={TOKEN}").status_code == 200  # an old bookmarked link
        assert browser.get(f"/c/{cid}/join/{invite}").status_code == 303
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', browser.get("/admin").text)[1]
        assert browser.post("/admin/login", data={"csrf": csrf, "token": TOKEN}).status_code == 303
        assert browser.get(f"/admin/c/{cid}").status_code == 200
    text = log.read_text()
    assert f'"GET /admin/c/{cid} HTTP/1.1" 200' in text  # the access log is on
    assert (
        '"GET /admin?[redacted] HTTP/1.1" 200' in text
        and f'"GET /c/{cid}/join/[redacted] HTTP/1.1" 303' in text
    )
    assert TOKEN not in text and invite not in text
    assert f"admin at {base}/admin (log in with your admin token)" in text


def test_cli_rejects_bad_limits_and_a_short_secret(tmp_path):
    done = cai(
        "collective", "serve", "--db", tmp_path / "c.sqlite", "--vote-limit", "lots", timeout=60
    )
    assert done.returncode == 2 and "--vote-limit must be N/PERIOD" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    done = cai(
        "collective", "serve", "--db", tmp_path / "c.sqlite", "--secret", "short", timeout=60
    )
    assert done.returncode == 2 and "--secret must be at least 16 characters" in done.stderr


def test_rates_parse_and_the_window_slides():
    assert parse_rate("30/h", "--x") == Rate(30, 3600) and parse_rate("600/10m", "--x") == Rate(
        600, 600
    )
    assert parse_rate("5/30s", "--x") == Rate(5, 30) and parse_rate("off", "--x").events == 0
    for bad in ("30", "30/d", "0/h", "3/0m", "-1/h"):
        with pytest.raises(UserError, match="--x must be N/PERIOD"):
            parse_rate(bad, "--x")
    now = [0.0]
    window = SlidingWindow(Rate(2, 60), clock=lambda: now[0], max_keys=2)
    assert [window.hit("a"), window.hit("a")] == [None, None] and window.hit("a") == 60
    now[0] = 30.0
    assert window.hit("a") == 30 and window.hit("b") is None
    now[0] = 60.0  # the first two events of "a" have left the window
    assert window.hit("a") is None and window.hit("a") is None and window.hit("a") is not None
    window.hit(
        "c"
    )  # a third address: the least recently seen, "b", is forgotten, with its event at 30 s
    assert window.hit("b") is None and window.hit("b") is None
