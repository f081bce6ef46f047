"""Rendering shared by the participant's and the admin's pages."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import HTMLResponse

from constitutional.collective.web.security import is_admin, participant
from constitutional.collective.web.store import Conversation


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """A page with the CSRF token of this browser's participant and whether it is the admin."""
    csrf = request.app.state.keys.csrf_token(participant(request))
    return request.app.state.templates.TemplateResponse(
        request,
        name,
        {
            "csrf": csrf,
            "admin": is_admin(request),
            "invite_only": request.app.state.invite_only,
            **context,
        },
        status_code=status_code,
    )


def conversation_or_404(request: Request, cid: int) -> Conversation:
    conversation = request.app.state.store.conversation(cid)
    if conversation is None:
        raise HTTPException(404, f"no conversation {cid}")
    return conversation
