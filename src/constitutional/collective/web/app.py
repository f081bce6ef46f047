"""`cai collective serve`: collect statements and votes in the browser, Polis-style.

    participant: /c/ID  one statement at a time → agree / disagree / pass; submit a statement
    anyone:      /c/ID/results  opinion-group map, per-group agreement, consensus, divisive
    admin:       /admin  create conversations, moderate, close voting, export (see admin.py)

Pages are rendered on the server with Jinja2 (autoescape on, so every user string is escaped)
and need no script. Forms post and redirect (303), so a reload never votes twice; the vote
itself is an upsert on a UNIQUE (participant, statement) pair anyway.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import jinja2
from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from constitutional.collective.web import admin
from constitutional.collective.web.pages import conversation_or_404, render
from constitutional.collective.web.results import group_name, results
from constitutional.collective.web.security import (
    PARTICIPANT_COOKIE,
    Guard,
    participant,
    require_csrf,
    valid_token,
)
from constitutional.collective.web.store import MAX_STATEMENT, VOTE_VALUES, Store

HERE = Path(__file__).parent
MAX_BODY_BYTES = 64 * 1024  # forms only: a statement is at most 280 characters, a seed list a few KiB
router = APIRouter()  # the participant's pages, below create_app


def create_app(store: Store, *, admin_token: str, seed: int = 0, min_votes: int = 7,
               max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The web app over `store`.

    Args:
        store: the database (`Store(open_engine(url))`).
        admin_token: the secret that opens /admin; also keys the CSRF tokens, so forms stay valid
            across a restart with the same token.
        seed: stored with each new conversation; orders every participant's statements.
        min_votes: participants with fewer votes are left out of the analysis (Polis uses 7).
        max_body_bytes: larger request bodies get 413.
    """
    app = FastAPI(title="constitutional collective", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store, app.state.admin_token, app.state.seed = store, admin_token, seed
    app.state.min_votes = min_votes
    app.state.secret = hmac.new(admin_token.encode(), b"collective-web", hashlib.sha256).digest()
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    env.globals.update(group_name=group_name, max_statement=MAX_STATEMENT)
    app.state.templates = Jinja2Templates(env=env)
    app.add_middleware(Guard, max_body_bytes=max_body_bytes)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(admin.router)
    app.include_router(router)
    _error_pages(app)
    return app


def _error_pages(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        return render(request, "message.html", exc.status_code, title=f"Error {exc.status_code}", text=exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        fields = ", ".join(".".join(str(p) for p in e["loc"][1:]) for e in exc.errors())
        return render(request, "message.html", 400, title="Error 400", text=f"missing or invalid form field: {fields}")


@router.get("/", response_class=HTMLResponse)
def home(request: Request) -> HTMLResponse:
    return render(request, "home.html", conversations=request.app.state.store.conversations())


@router.get("/c/{cid}", response_class=HTMLResponse)
def conversation(request: Request, cid: int, submitted: bool = False) -> HTMLResponse:
    """The participant's page: progress, the next statement to vote on, a box for a new one."""
    convo = conversation_or_404(request, cid)
    statement, voted, total = request.app.state.store.next_statement(cid, participant(request))
    return render(request, "conversation.html", conversation=convo, statement=statement, voted=voted,
                  total=total, submitted=submitted)


@router.post("/c/{cid}/vote", dependencies=[Depends(require_csrf)])
def vote(request: Request, cid: int, statement: int = Form(...), choice: str = Form(...)) -> RedirectResponse:
    convo = conversation_or_404(request, cid)
    if not convo.is_open:
        raise HTTPException(409, "voting on this conversation is closed")
    if choice not in VOTE_VALUES:
        raise HTTPException(400, f"vote must be one of {', '.join(VOTE_VALUES)}")
    store: Store = request.app.state.store
    if statement not in {st.id for st, _ in store.statements(cid, "accepted")}:
        raise HTTPException(404, f"no statement {statement} open for votes in this conversation")
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
    request.app.state.store.add_statement(cid, participant(request), text)
    return RedirectResponse(f"/c/{cid}?submitted=true", status_code=303)


@router.get("/c/{cid}/join/{token}")
def join(request: Request, cid: int, token: str) -> RedirectResponse:
    """An invite link: this browser becomes the invited participant."""
    conversation_or_404(request, cid)
    if not valid_token(token) or not request.app.state.store.invited(token):
        raise HTTPException(404, "this invite link is not valid")
    response = RedirectResponse(f"/c/{cid}", status_code=303)
    response.set_cookie(PARTICIPANT_COOKIE, token, max_age=31536000, httponly=True, samesite="lax")
    return response


@router.get("/c/{cid}/results", response_class=HTMLResponse)
def results_page(request: Request, cid: int) -> HTMLResponse:
    convo = conversation_or_404(request, cid)
    analysis = results(request.app.state.store, cid, request.app.state.min_votes)
    return render(request, "results.html", conversation=convo, result=analysis)
