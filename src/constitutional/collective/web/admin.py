"""The admin's pages: create a conversation, moderate statements, close voting, invite, export.

Every route here but the login needs an admin session (or the Bearer token; 403 otherwise);
every POST also needs the CSRF token. The token is posted in the login form, never put in a URL:
URLs end up in access logs, browser history and Referer headers.
The export is the layout `cai collective analyze` (and `to-constitution`) reads:
`votes.csv` (participant,statement,vote) and `comments.csv` (statement,text).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response

from constitutional.collective.web.limits import limit
from constitutional.collective.web.pages import conversation_or_404, render
from constitutional.collective.web.security import (
    ADMIN_COOKIE,
    SESSION_SECONDS,
    is_admin,
    new_token,
    require_admin,
    require_csrf,
    same_secret,
)
from constitutional.collective.web.store import MAX_STATEMENT, MAX_TOPIC, Store

router = APIRouter(prefix="/admin")
admin_only = [Depends(require_admin)]
admin_form = [Depends(require_admin), Depends(require_csrf)]
MAX_INVITES = 500  # per click


@router.get("", response_class=HTMLResponse)
def dashboard(request: Request) -> Response:
    """The admin's home, or the login form. A `?token=` in the URL is ignored: it logs no one in."""
    if not is_admin(request):
        return render(request, "admin_login.html", wrong=False)
    return render(request, "admin.html", conversations=request.app.state.store.conversations())


@router.post("/login", dependencies=[Depends(require_csrf)])
def login(request: Request, token: str = Form("")) -> Response:
    """The admin token, posted: the browser gets a cookie holding a new random session id."""
    limit(request, "logins", "admin login attempts")
    if not same_secret(token, request.app.state.admin_token):
        return render(request, "admin_login.html", 403, wrong=True)
    response = RedirectResponse("/admin", status_code=303)
    response.set_cookie(
        ADMIN_COOKIE,
        request.app.state.sessions.start(),
        max_age=SESSION_SECONDS,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout", dependencies=[Depends(require_csrf)])
def logout(request: Request) -> RedirectResponse:
    request.app.state.sessions.end(request.cookies.get(ADMIN_COOKIE, ""))
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(ADMIN_COOKIE)
    return response


@router.post("/conversations", dependencies=admin_form)
def create(
    request: Request, topic: str = Form(...), description: str = Form(""), seeds: str = Form("")
) -> RedirectResponse:
    """A new open conversation; `seeds` holds one seed statement per line, accepted at once."""
    topic = " ".join(topic.split())
    statements = [" ".join(line.split()) for line in seeds.splitlines() if line.strip()]
    if not topic or len(topic) > MAX_TOPIC:
        raise HTTPException(400, f"the topic needs 1 to {MAX_TOPIC} characters")
    too_long = [i for i, s in enumerate(statements, 1) if len(s) > MAX_STATEMENT]
    if too_long:
        raise HTTPException(
            400, f"seed statement on line {too_long[0]} is over {MAX_STATEMENT} characters"
        )
    store: Store = request.app.state.store
    cid = store.create_conversation(
        topic, description.strip(), list(dict.fromkeys(statements)), request.app.state.seed
    )
    return RedirectResponse(f"/admin/c/{cid}", status_code=303)


@router.get("/c/{cid}", response_class=HTMLResponse, dependencies=admin_only)
def manage(request: Request, cid: int) -> HTMLResponse:
    """Moderation queue, every statement with its votes, close, invite, export."""
    convo = conversation_or_404(request, cid)
    statements = request.app.state.store.statements(cid)
    return render(
        request,
        "admin_conversation.html",
        conversation=convo,
        statements=statements,
        pending=[(st, n) for st, n in statements if st.status == "pending"],
        invites=[],
    )


@router.post("/statements/{sid}", dependencies=admin_form)
def moderate(request: Request, sid: int, decision: str = Form(...)) -> RedirectResponse:
    if decision not in ("accept", "reject"):
        raise HTTPException(400, "decision must be accept or reject")
    cid = request.app.state.store.moderate(sid, decision == "accept")
    if cid is None:
        raise HTTPException(404, f"no statement {sid}")
    return RedirectResponse(f"/admin/c/{cid}", status_code=303)


@router.post("/c/{cid}/state", dependencies=admin_form)
def set_state(request: Request, cid: int, state: str = Form(...)) -> RedirectResponse:
    """Close (or reopen) voting and statement submission."""
    conversation_or_404(request, cid)
    if state not in ("open", "closed"):
        raise HTTPException(400, "state must be open or closed")
    request.app.state.store.set_open(cid, state == "open")
    return RedirectResponse(f"/admin/c/{cid}", status_code=303)


@router.post("/c/{cid}/invites", response_class=HTMLResponse, dependencies=admin_form)
def invite(request: Request, cid: int, count: int = Form(...)) -> HTMLResponse:
    """`count` invite links, each a fresh participant; shown once, on this page."""
    convo = conversation_or_404(request, cid)
    if not 1 <= count <= MAX_INVITES:
        raise HTTPException(400, f"invite 1 to {MAX_INVITES} people at a time")
    tokens = [new_token() for _ in range(count)]
    store: Store = request.app.state.store
    store.invite(tokens)
    base = str(request.base_url).rstrip("/")
    statements = store.statements(cid)
    return render(
        request,
        "admin_conversation.html",
        conversation=convo,
        statements=statements,
        pending=[(st, n) for st, n in statements if st.status == "pending"],
        invites=[f"{base}/c/{cid}/join/{t}" for t in tokens],
    )


@router.get("/c/{cid}/votes.csv", dependencies=admin_only)
def export_votes(request: Request, cid: int) -> PlainTextResponse:
    conversation_or_404(request, cid)
    votes = request.app.state.store.export_votes(cid, request.app.state.invite_only)
    return _csv(votes, f"conversation-{cid}-votes.csv")


@router.get("/c/{cid}/comments.csv", dependencies=admin_only)
def export_comments(request: Request, cid: int) -> PlainTextResponse:
    conversation_or_404(request, cid)
    return _csv(request.app.state.store.export_comments(cid), f"conversation-{cid}-comments.csv")


def _csv(text: str, filename: str) -> PlainTextResponse:
    return PlainTextResponse(
        text,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
