"""Who is asking, and may they: participant cookies, CSRF tokens, the admin token, size limits.

- Every browser gets a random participant token in an HttpOnly cookie on its first page (or from
  an invite link). The database stores it but exports only the participant's row number.
- CSRF: each form carries HMAC(secret, participant token); a POST whose form field does not match
  the cookie it came with is refused (403). A foreign site can make the browser send the cookie
  but cannot read the token to put in the form.
- Admin routes need the admin token, from the `cai_admin` cookie (set by /admin?token=...) or an
  `Authorization: Bearer` header; anything else gets 403.
- Request bodies over a limit get 413 before any parsing, with or without Content-Length.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from typing import Any

from fastapi import Form, HTTPException, Request

PARTICIPANT_COOKIE = "cai_participant"
ADMIN_COOKIE = "cai_admin"
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
HEADERS = {  # on every response: no script at all, no framing, no admin token in a Referer
    "Content-Security-Policy": "default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                               "form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def new_token() -> str:
    return secrets.token_urlsafe(18)  # 144 random bits, 24 characters


def valid_token(token: str | None) -> bool:
    return token is not None and TOKEN_RE.fullmatch(token) is not None


def participant(request: Request) -> str:
    """This browser's participant token (the middleware guarantees there is one)."""
    return request.state.participant


def csrf_token(secret: bytes, token: str) -> str:
    return hmac.new(secret, f"csrf:{token}".encode(), hashlib.sha256).hexdigest()


def require_csrf(request: Request, csrf: str = Form("")) -> None:
    """FastAPI dependency for every form POST."""
    expected = csrf_token(request.app.state.secret, participant(request))
    if not hmac.compare_digest(csrf.encode(), expected.encode()):
        raise HTTPException(403, "the form's security token is missing or stale: reload the page and try again")


def is_admin(request: Request) -> bool:
    token: str = request.app.state.admin_token
    given = request.cookies.get(ADMIN_COOKIE, "")
    scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        given = bearer.strip()
    return bool(given) and hmac.compare_digest(given.encode(), token.encode())


def require_admin(request: Request) -> None:
    """FastAPI dependency for every admin route."""
    if not is_admin(request):
        raise HTTPException(403, "admin only: open the admin link printed by `cai collective serve`")


class Guard:
    """ASGI middleware: body size limit (413), participant cookie, security headers.

    The body is read whole (at most `max_body_bytes`) before the app sees it, so a chunked
    request without Content-Length is bounded too; it is then replayed to the app.
    """

    def __init__(self, app: Any, *, max_body_bytes: int):
        self.app, self.max_body_bytes = app, max_body_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = await self._body(scope, receive)
        if body is None:
            await _plain(send, 413, f"request body over {self.max_body_bytes} bytes")
            return
        cookie = Request(scope).cookies.get(PARTICIPANT_COOKIE)
        fresh = not valid_token(cookie)
        scope.setdefault("state", {})["participant"] = new_token() if fresh else cookie
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(k.lower().encode(), v.encode()) for k, v in HEADERS.items()]
                own = any(k == b"set-cookie" and v.startswith(PARTICIPANT_COOKIE.encode()) for k, v in headers)
                if fresh and not own:  # an invite link sets its own participant cookie
                    headers.append((b"set-cookie", _cookie(scope["state"]["participant"])))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, replay, send_with_headers)

    async def _body(self, scope: Any, receive: Any) -> bytes | None:
        """The whole request body, or None when it is over the limit."""
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            return None
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body_bytes:
                return None
        return body


def _cookie(token: str) -> bytes:
    # Lax: the cookie rides on top-level navigation (an invite link opened from mail) but not on
    # cross-site POSTs; the CSRF token covers the rest. A year, so a participant stays one person.
    return f"{PARTICIPANT_COOKIE}={token}; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax".encode()


async def _plain(send: Any, status: int, text: str) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
    await send({"type": "http.response.body", "body": text.encode()})
