"""`cai collective serve`: collect statements and votes in the browser, Polis-style.

    participant: /c/ID  one statement at a time → agree / disagree / pass; submit a statement
    anyone:      /c/ID/results  opinion-group map, per-group agreement, consensus, divisive
    admin:       /admin  create conversations, moderate, close voting, export (see admin.py)

Pages are rendered on the server with Jinja2 (autoescape on, so every user string is escaped)
and need no script. Forms post and redirect (303), so a reload never votes twice; the vote
itself is an upsert on a UNIQUE (participant, statement) pair anyway.

Ballot stuffing is bounded three ways (see security.py and limits.py): participant cookies are
signed by the server; each IP address may bring only so many new participants, votes and
statements per period (429 beyond); and with `invite_only` only invited participants vote.
"""

from __future__ import annotations

from pathlib import Path

import jinja2
from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from constitutional.collective.web import admin
from constitutional.collective.web.limits import Limits, SlidingWindow, limit
from constitutional.collective.web.pages import conversation_or_404, render
from constitutional.collective.web.results import ResultsCache, group_name
from constitutional.collective.web.security import (
    Guard,
    Keys,
    Sessions,
    participant,
    participant_cookie,
    require_csrf,
    valid_token,
)
from constitutional.collective.web.store import MAX_STATEMENT, VOTE_VALUES, Store

HERE = Path(__file__).parent
MAX_BODY_BYTES = (
    64 * 1024
)  # forms only: a statement is at most 280 characters, a seed list a few KiB
router = APIRouter()  # the participant's pages, below create_app


def create_app(
    store: Store,
    *,
    admin_token: str,
    secret: str | None = None,
    seed: int = 0,
    min_votes: int = 7,
    max_body_bytes: int = MAX_BODY_BYTES,
    limits: Limits | None = None,
    invite_only: bool = False,
) -> FastAPI:
    """The web app over `store`.

    Args:
        store: the database (`Store(open_engine(url))`).
        admin_token: the secret an admin logs in with at /admin (or sends as a Bearer token).
        secret: signs participant cookies and CSRF tokens; default: one made once and kept in the
            database, so cookies stay valid across restarts.
        seed: stored with each new conversation; orders every participant's statements.
        min_votes: participants with fewer votes are left out of the analysis (Polis uses 7).
        max_body_bytes: larger request bodies get 413.
        limits: per-IP rates of new participants, votes, statements and admin logins (429 beyond);
            default `Limits()`.
        invite_only: only invited participants may vote or submit, and only their votes count.
    """
    app = FastAPI(
        title="constitutional collective", docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.store, app.state.admin_token, app.state.seed = store, admin_token, seed
    app.state.min_votes, app.state.invite_only = min_votes, invite_only
    app.state.keys = Keys(secret.encode() if secret is not None else store.secret())
    app.state.sessions = Sessions()
    limits = limits or Limits()
    app.state.limiters = {
        name: SlidingWindow(getattr(limits, name))
        for name in ("participants", "votes", "statements", "logins")
    }
    app.state.results = ResultsCache(store, min_votes, invite_only)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.globals.update(group_name=group_name, max_statement=MAX_STATEMENT)
    app.state.templates = Jinja2Templates(env=env)
    app.add_middleware(Guard, max_body_bytes=max_body_bytes, keys=app.state.keys)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(admin.router)
    app.include_router(router)
    _error_pages(app)
    return app


def _error_pages(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        response = render(
            request,
            "message.html",
            exc.status_code,
            title=f"Error {exc.status_code}",
            text=exc.detail,
        )
        response.headers.update(exc.headers or {})  # Retry-After on a 429
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        fields = ", ".join(".".join(str(p) for p in e["loc"][1:]) for e in exc.errors())
        return render(
            request,
            "message.html",
            400,
            title="Error 400",
            text=f"missing or invalid form field: {fields}",
        )


def may_take_part(request: Request) -> bool:
    """In invite-only mode, only invited participants vote and submit."""
    return not request.app.state.invite_only or request.app.state.store.invited(
        participant(request)
    )


def admit(request: Request, name: str, what: str) -> None:
    """The checks before a participant writes: invitation, then the per-IP limits."""
    if not may_take_part(request):
        raise HTTPException(
            403, "this conversation is by invitation only: open the invite link you were sent"
        )
    if not request.app.state.store.known(participant(request)):
        limit(request, "participants", "new participants")
    limit(request, name, what)


@router.get("/", response_class=HTMLResponse)
def home(request: Request) -> HTMLResponse:
    return render(request, "home.html", conversations=request.app.state.store.conversations())


@router.get("/c/{cid}", response_class=HTMLResponse)
def conversation(request: Request, cid: int, submitted: bool = False) -> HTMLResponse:
    """The participant's page: progress, the next statement to vote on, a box for a new one."""
    convo = conversation_or_404(request, cid)
    statement, voted, total = request.app.state.store.next_statement(cid, participant(request))
    return render(
        request,
        "conversation.html",
        conversation=convo,
        statement=statement,
        voted=voted,
        total=total,
        submitted=submitted,
        needs_invite=not may_take_part(request),
    )


@router.post("/c/{cid}/vote", dependencies=[Depends(require_csrf)])
def vote(
    request: Request, cid: int, statement: int = Form(...), choice: str = Form(...)
) -> RedirectResponse:
    convo = conversation_or_404(request, cid)
    if not convo.is_open:
        raise HTTPException(409, "voting on this conversation is closed")
    if choice not in VOTE_VALUES:
        raise HTTPException(400, f"vote must be one of {', '.join(VOTE_VALUES)}")
    store: Store = request.app.state.store
    if statement not in {st.id for st, _ in store.statements(cid, "accepted")}:
        raise HTTPException(404, f"no statement {statement} open for votes in this conversation")
    admit(request, "votes", "votes")
    store.vote(participant(request), statement, VOTE_VALUES[choice])
    return RedirectResponse(f"/c/{cid}", status_code=303)


@router.post("/c/{cid}/statements", dependencies=[Depends(require_csrf)])
def submit(request: Request, cid: int, text: str = Form(...)) -> RedirectResponse:
    """A new statement from a participant; it waits for moderation before anyone votes on it."""
    convo = conversation_or_404(request, cid)
    if not convo.is_open:
        raise HTTPException(409, "this conversation is closed")
    text = " ".join(text.split())
    if not text or len(text) > MAX_STATEMENT:
        raise HTTPException(400, f"a statement needs 1 to {MAX_STATEMENT} characters")
    admit(request, "statements", "statements")
    request.app.state.store.add_statement(cid, participant(request), text)
    return RedirectResponse(f"/c/{cid}?submitted=true", status_code=303)


@router.get("/c/{cid}/join/{token}")
def join(request: Request, cid: int, token: str) -> RedirectResponse:
    """An invite link: this browser becomes the invited participant."""
    conversation_or_404(request, cid)
    if not valid_token(token) or not request.app.state.store.invited(token):
        raise HTTPException(404, "this invite link is not valid")
    response = RedirectResponse(f"/c/{cid}", status_code=303)  # the token leaves the address bar
    response.headers.append(
        "set-cookie", participant_cookie(request.app.state.keys, token).decode("latin-1")
    )
    return response


@router.get("/c/{cid}/results", response_class=HTMLResponse)
def results_page(request: Request, cid: int) -> HTMLResponse:
    convo = conversation_or_404(request, cid)
    analysis = request.app.state.results.get(cid)
    return render(
        request,
        "results.html",
        conversation=convo,
        result=analysis,
        origins=request.app.state.store.origins(cid),
    )
