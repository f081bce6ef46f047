"""Who is asking, and may they: participant cookies, CSRF tokens, admin sessions, size limits.

- Every browser gets a random participant token on its first page (or from an invite link), in an
  HttpOnly cookie signed by the server (`token.HMAC-SHA256(key, token)`): a cookie the server did
  not sign is refused (403) and cleared, so a client cannot invent participants by making up
  cookie values. The database stores the token but exports only the participant's row number.
- CSRF: each form carries HMAC(key, participant token); a POST whose form field does not match
  the cookie it came with is refused (403). A foreign site can make the browser send the cookie
  but cannot read the token to put in the form.
- The admin logs in by posting the admin token in a form (never in a URL, so never in a log);
  the cookie then holds a random session id that maps to nothing but "admin" on the server.
  Scripts may send `Authorization: Bearer <admin token>` instead.
- Request bodies over a limit get 413 before any parsing, with or without Content-Length.
- Every response, errors and 500s included, carries the security headers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from typing import Any

from fastapi import Form, HTTPException, Request

PARTICIPANT_COOKIE = "cai_participant"
ADMIN_COOKIE = "cai_admin"
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
SESSION_SECONDS = 12 * 3600
MAX_SESSIONS = 1000  # admin logins held at once; the oldest goes first
HEADERS = {  # on every response: no script at all, no framing, no admin page address in a Referer
    "Content-Security-Policy": "default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
log = logging.getLogger("constitutional.collective.web")


def new_token() -> str:
    return secrets.token_urlsafe(18)  # 144 random bits, 24 characters


def valid_token(token: str | None) -> bool:
    return token is not None and TOKEN_RE.fullmatch(token) is not None


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison of two secrets as UTF-8 bytes (any str, even a lone surrogate)."""
    return hmac.compare_digest(
        given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )


class Keys:
    """Keys derived from the server secret, one per purpose, so no MAC can stand in for another."""

    def __init__(self, secret: bytes):
        self.participant = hmac.new(
            secret, b"collective participant cookie", hashlib.sha256
        ).digest()
        self.csrf = hmac.new(secret, b"collective csrf", hashlib.sha256).digest()

    def sign(self, token: str) -> str:
        mac = hmac.new(self.participant, token.encode(), hashlib.sha256).digest()
        return f"{token}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"

    def verify(self, cookie: str) -> str | None:
        """The participant token inside a cookie this server signed, else None."""
        token, _, _ = cookie.partition(".")
        if not valid_token(token):
            return None
        return token if same_secret(cookie, self.sign(token)) else None

    def csrf_token(self, token: str) -> str:
        return hmac.new(self.csrf, f"csrf:{token}".encode(), hashlib.sha256).hexdigest()


def participant(request: Request) -> str:
    """This browser's participant token (the middleware guarantees there is one)."""
    return request.state.participant


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def require_csrf(request: Request, csrf: str = Form("")) -> None:
    """FastAPI dependency for every form POST."""
    if not same_secret(csrf, request.app.state.keys.csrf_token(participant(request))):
        raise HTTPException(
            403, "the form's security token is missing or stale: reload the page and try again"
        )


class Sessions:
    """Admin sessions: random ids held in memory (a restart logs the admin out), looked up by hash."""

    def __init__(self, seconds: float = SESSION_SECONDS, most: int = MAX_SESSIONS):
        self.seconds, self.most = seconds, most
        self._expiry: dict[bytes, float] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(session: str) -> bytes:
        # Keyed by digest: a dict lookup then reveals nothing about a stored id through its timing.
        return hashlib.sha256(session.encode("utf-8", "surrogatepass")).digest()

    def start(self) -> str:
        session = secrets.token_urlsafe(32)
        with self._lock:
            while len(self._expiry) >= self.most:
                self._expiry.pop(next(iter(self._expiry)))
            self._expiry[self._key(session)] = time.monotonic() + self.seconds
        return session

    def valid(self, session: str) -> bool:
        with self._lock:
            expiry = self._expiry.get(self._key(session))
            if expiry is not None and expiry < time.monotonic():
                del self._expiry[self._key(session)]
                return False
            return expiry is not None

    def end(self, session: str) -> None:
        with self._lock:
            self._expiry.pop(self._key(session), None)


def is_admin(request: Request) -> bool:
    scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and bearer.strip():
        return same_secret(bearer.strip(), request.app.state.admin_token)
    session = request.cookies.get(ADMIN_COOKIE, "")
    return bool(session) and request.app.state.sessions.valid(session)


def require_admin(request: Request) -> None:
    """FastAPI dependency for every admin route."""
    if not is_admin(request):
        raise HTTPException(403, "admin only: log in at /admin")


class Guard:
    """ASGI middleware: body size limit (413), signed participant cookie (403 when forged),
    security headers on every response, and a bare 500 (no exception text) for any crash.

    The body is read whole (at most `max_body_bytes`) before the app sees it, so a chunked
    request without Content-Length is bounded too; it is then replayed to the app.
    """

    def __init__(self, app: Any, *, max_body_bytes: int, keys: Keys):
        self.app, self.max_body_bytes, self.keys = app, max_body_bytes, keys

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cookie = Request(scope).cookies.get(PARTICIPANT_COOKIE)
        token = self.keys.verify(cookie) if cookie is not None else new_token()
        if token is None:
            await _plain(
                send,
                403,
                "this participant cookie was not issued by this server; it has been "
                "cleared: reload the page to continue as a new participant",
                (
                    (
                        b"set-cookie",
                        f"{PARTICIPANT_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax".encode(),
                    ),
                ),
            )
            return
        body = await self._body(scope, receive)
        if body is None:
            await _plain(send, 413, f"request body over {self.max_body_bytes} bytes")
            return
        scope.setdefault("state", {})["participant"] = token
        await self._serve(scope, body, receive, send, fresh=cookie is None)

    async def _serve(self, scope: Any, body: bytes, receive: Any, send: Any, fresh: bool) -> None:
        sent_body, started = False, False

        async def replay() -> dict[str, Any]:
            nonlocal sent_body
            if sent_body:
                return await receive()
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send_with_headers(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [*message.get("headers", []), *_security_headers()]
                own = any(
                    k == b"set-cookie" and v.startswith(PARTICIPANT_COOKIE.encode())
                    for k, v in headers
                )
                if fresh and not own:  # an invite link sets its own participant cookie
                    headers.append(
                        (
                            b"set-cookie",
                            participant_cookie(self.keys, scope["state"]["participant"]),
                        )
                    )
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, replay, send_with_headers)
        except Exception:
            # Logged without the query string, which may hold a token; the client learns nothing.
            log.exception(
                "error serving %s %s", scope.get("method"), redact_path(scope.get("path", ""))
            )
            if not started:
                await _plain(send, 500, "internal server error")

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


def participant_cookie(keys: Keys, token: str) -> bytes:
    # Lax: the cookie rides on top-level navigation (an invite link opened from mail) but not on
    # cross-site POSTs; the CSRF token covers the rest. A year, so a participant stays one person.
    return f"{PARTICIPANT_COOKIE}={keys.sign(token)}; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax".encode()


def _security_headers() -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode(), v.encode()) for k, v in HEADERS.items()]


async def _plain(
    send: Any, status: int, text: str, extra: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    headers = [(b"content-type", b"text/plain; charset=utf-8"), *_security_headers(), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": text.encode()})


# --- keeping tokens out of logs ---------------------------------------------------------------
JOIN_RE = re.compile(r"(/join/)[^/?]*")


def redact_path(path: str) -> str:
    """A request path fit for a log: invite tokens and the whole query string replaced."""
    path, query, _ = path.partition("?")
    return JOIN_RE.sub(r"\1[redacted]", path) + ("?[redacted]" if query else "")


class RedactTokens(logging.Filter):
    """For uvicorn's access log, whose third argument is the path with its query string."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], redact_path(args[2]), *args[3:])
        return True
