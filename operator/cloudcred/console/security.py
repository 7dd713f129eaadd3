"""Who may use the console, and what the browser is told not to do.

- The URL the CLI prints carries a one-time login token. Its first use opens a session:
  a cookie of its own (HttpOnly, SameSite=Strict, named after the port, since cookies do
  not tell ports apart) and a CSRF token. Every request, assets included, needs the
  cookie; a used or wrong login token opens nothing.
- Every POST carries the session's CSRF token in its form, and a browser's Origin or
  Sec-Fetch-Site, when sent, must be this console's own.
- The Host header must name the loopback address and port served: a page on another
  site cannot reach the console through a DNS name that resolves to 127.0.0.1.
- Every response has a Content-Security-Policy that allows this origin only (no inline
  script or style, no frames, forms post here only) and is never cached.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-store",
}
TOKEN_BYTES = 32


def _equal(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


@dataclass
class Sessions:
    """Login tokens not used yet, and the sessions they opened (cookie -> CSRF token)."""

    port: int
    logins: set[str] = field(default_factory=set)
    sessions: dict[str, str] = field(default_factory=dict)

    @property
    def cookie_name(self) -> str:
        return f"cloudcred-console-{self.port}"

    def new_login(self) -> str:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        self.logins.add(token)
        return token

    def log_in(self, token: str | None) -> str | None:
        """The new session's cookie value when ``token`` is an unused login token (it is
        used up), else None."""
        match = next((login for login in self.logins if _equal(token, login)), None)
        if match is None:
            return None
        self.logins.discard(match)
        session = secrets.token_urlsafe(TOKEN_BYTES)
        self.sessions[session] = secrets.token_urlsafe(TOKEN_BYTES)
        return session

    def session(self, cookie: str | None) -> str | None:
        """The session's key when ``cookie`` opens one, else None."""
        return next((key for key in self.sessions if _equal(cookie, key)), None)

    def csrf(self, session: str) -> str:
        return self.sessions[session]

    def csrf_ok(self, session: str, given: str | None) -> bool:
        return _equal(given, self.sessions[session])


def allowed_hosts(port: int) -> set[str]:
    return {f"127.0.0.1:{port}", f"localhost:{port}"}


def same_origin(port: int, origin: str | None, fetch_site: str | None) -> bool:
    """A browser's Origin and Sec-Fetch-Site headers, when sent, say this console."""
    if origin is not None and origin not in {f"http://{host}" for host in allowed_hosts(port)}:
        return False
    return fetch_site in (None, "same-origin", "none")
