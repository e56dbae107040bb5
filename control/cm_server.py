"""cm_server: the cluster's web UI (Redis Enterprise's "cluster manager" console), served by
FastAPI on hypercorn's Trio worker at the node's `address:ui_port`. Every node runs one; any of
them shows the whole cluster.

What it owns: the log-in, the browser sessions and the static front end in control/ui/ (plain
ES modules, uPlot vendored in control/ui/vendor/: no build step, nothing fetched at run time).
It is a client of the node's own cnm_http (over HTTP; over HTTPS verified against the cluster's
CA when the node serves its REST API over HTTPS only) and nothing else: it never reads or
writes CCS, and every page's data and every operation is a REST call, passed through
`/api/v1/...` with the session user's credentials, whose answer (status and JSON body, the 400/406 reasons included)
the browser gets as cnm_http gave it. So the UI can do exactly what the REST API lets that user
do, and says what it says.

Log-in: a plain HTML form (user, password) at `/login`; the credentials are accepted when
cnm_http accepts them. A session is a random token in an HttpOnly, SameSite=Strict cookie;
sessions live in this process's memory (a restarted cm_server asks for the log-in again) and end
after SESSION_IDLE seconds without a request. Nothing but the log-in page and its stylesheet is
served without a session. CSRF: every request that changes something carries the session's
token in `X-CSRF-Token` (the log-in form a token bound to a cookie of its own), and requests
from another origin are refused whatever they carry. The UI is served over HTTPS (and its
cookies are Secure) with the node's certificate (NodeConfig.ui_certificate: node.json's
`ui_certfile`/`ui_keyfile`, else the node's `api` certificate, signed by the cluster CA and
renewed with the REST API's: a renewed one is loaded within tls.CERT_CHECK_EVERY); over HTTP only on
a node without certificates.
"""

from __future__ import annotations

import logging
import secrets
import ssl
import time
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import hypercorn.trio
import trio
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from control import tls
from control.cnm_http import hypercorn_config
from control.node import NodeConfig, service_command

log = logging.getLogger("cm_server")
logging.getLogger("httpx").setLevel(logging.WARNING)     # not a line per REST call it passes on

UI_DIR = Path(__file__).resolve().parent / "ui"
SESSION_COOKIE = "dmc_ui_session"
LOGIN_COOKIE = "dmc_ui_login"          # the log-in form's CSRF token (double submit)
SESSION_IDLE = 3600.0                  # seconds without a request that end a session
MAX_SESSIONS = 1000                    # the oldest go first beyond this
REST_TIMEOUT = 15.0
MAX_LOGIN_FORM = 8192                  # bytes: a user name and a password, not a payload
# Without a session: the log-in page and what it shows.
PUBLIC_PATHS = {"/login", "/static/style.css", "/favicon.ico"}
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
# What the browser may load: only this server's own files; no frames of it anywhere.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; "
                               "form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",   # "no-referrer" would make a form post's Origin "null"
    "Cache-Control": "no-store",
}


@dataclass
class Session:
    username: str
    password: str                       # kept in memory only: each REST call sends it
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    last_seen: float = 0.0


class Sessions:
    """The browser sessions of this process, by cookie token."""

    def __init__(self, idle: float = SESSION_IDLE, limit: int = MAX_SESSIONS):
        self.idle, self.limit = idle, limit
        self._by_token: dict[str, Session] = {}

    def open(self, username: str, password: str) -> tuple[str, Session]:
        self._expire()
        while len(self._by_token) >= self.limit:
            oldest = min(self._by_token, key=lambda t: self._by_token[t].last_seen)
            del self._by_token[oldest]
        token = secrets.token_urlsafe(32)
        session = self._by_token[token] = Session(username, password,
                                                  last_seen=time.monotonic())
        return token, session

    def get(self, token: str | None) -> Session | None:
        session = self._by_token.get(token or "")
        if session is None:
            return None
        now = time.monotonic()
        if now - session.last_seen > self.idle:
            del self._by_token[token]
            return None
        session.last_seen = now
        return session

    def close(self, token: str | None) -> None:
        self._by_token.pop(token or "", None)

    def close_user(self, username: str, password: str) -> None:
        """Every session logged in with credentials the REST API no longer accepts."""
        for token, s in list(self._by_token.items()):
            if s.username == username and s.password == password:
                del self._by_token[token]

    def _expire(self) -> None:
        now = time.monotonic()
        for token, s in list(self._by_token.items()):
            if now - s.last_seen > self.idle:
                del self._by_token[token]


def same_origin(request: Request) -> bool:
    """The request comes from a page of this server (or says nothing of where it comes from:
    not a browser's cross-site request, which always names its Origin on POST)."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin:
        return True
    parts = urlsplit(origin)
    return f"{parts.scheme}://{parts.netloc}" == f"{request.url.scheme}://{request.url.netloc}"


def login_page(csrf: str, error: str | None = None, username: str = "") -> str:
    """The log-in form: plain HTML, no script, so any browser automation can drive it."""
    message = f'<p class="error" id="login-error" role="alert">{escape(error)}</p>' if error else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>dmc: log in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/static/style.css"></head>
<body class="login"><main class="login-box">
<h1><span class="logo">dmc</span> cluster manager</h1>
<form method="post" action="/login">
<input type="hidden" name="csrf_token" value="{escape(csrf)}">
<label for="username">User</label>
<input id="username" name="username" type="text" autocomplete="username" required
 value="{escape(username)}" autofocus>
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
{message}
<button type="submit" id="login-submit">Log in</button>
</form>
<p class="hint">The cluster admin's credentials, as the REST API knows them.</p>
</main></body></html>"""


class CmServer:
    def __init__(self, config: NodeConfig):
        self.config = config
        self.sessions = Sessions()
        self.certificate = config.ui_certificate()
        self.tls = self.certificate is not None
        self.rest_url, self.rest_verify = rest_endpoint(config)
        self.app = build_app(self)

    async def run(self) -> None:
        hc = hypercorn_config(self.config.address, self.config.ui_port, log,
                              *(self.certificate or ()), node_dir=self.config.dir)
        log.info("node %d: web UI on %s", self.config.uid, ui_url(self.config))
        async with httpx.AsyncClient(base_url=self.rest_url, timeout=REST_TIMEOUT,
                                     verify=self.rest_verify) as client, \
                trio.open_nursery() as nursery:
            self.rest = client
            if self.tls:
                nursery.start_soon(tls.keep_following, hc.reload_certificate, log, "web UI")
            await hypercorn.trio.serve(self.app, hc)
            nursery.cancel_scope.cancel()

    async def rest_call(self, session: Session, method: str, path: str, query: bytes,
                        body: bytes, content_type: str | None) -> httpx.Response:
        headers = {"content-type": content_type} if content_type else {}
        return await self.rest.request(method, path, params=query.decode() or None,
                                       content=body or None, headers=headers,
                                       auth=(session.username, session.password))

    async def check_login(self, username: str, password: str) -> str | None:
        """None if the REST API accepts these credentials, else what to tell the user."""
        try:
            reply = await self.rest.get("/v1/cluster", auth=(username, password))
        except httpx.TransportError as exc:
            return f"the REST API of this node does not answer ({type(exc).__name__})"
        if reply.status_code == 401:
            return "wrong user name or password"
        if reply.status_code >= 500:
            return f"the REST API answered {reply.status_code}: " + _description(reply)
        return None


def rest_endpoint(config: NodeConfig) -> tuple[str, ssl.SSLContext | bool]:
    """Where this node's cnm_http answers, and how to trust it: its HTTP port on the node's own
    address, or, with HTTP turned off (`rest_http` false), HTTPS verified against the cluster's
    CA."""
    if config.rest_http:
        return f"http://{config.address}:{config.rest_port}", True
    return (f"https://{config.address}:{config.rest_tls_port}",
            ssl.create_default_context(cafile=str(tls.ca_file(config.dir))))


def ui_url(config: NodeConfig) -> str:
    scheme = "https" if config.ui_certificate() is not None else "http"
    return f"{scheme}://{config.address}:{config.ui_port}/"


def _description(reply: httpx.Response) -> str:
    try:
        return str(reply.json().get("description"))
    except ValueError:
        return reply.text[:200]


def build_app(server: CmServer) -> FastAPI:
    app = FastAPI(title="dmc cluster manager", openapi_url=None, docs_url=None, redoc_url=None)
    sessions = server.sessions

    def set_cookie(response: Response, name: str, value: str) -> None:
        response.set_cookie(name, value, httponly=True, samesite="strict", secure=server.tls,
                            path="/")

    @app.middleware("http")
    async def gate(request: Request, call_next):
        """Nothing without a session but PUBLIC_PATHS; nothing that changes state from another
        origin or without the session's CSRF token."""
        path = request.url.path
        session = sessions.get(request.cookies.get(SESSION_COOKIE))
        request.state.session = session
        if request.method not in SAFE_METHODS and not same_origin(request):
            response = JSONResponse({"error_code": "forbidden", "description":
                                     "cross-origin request refused"}, status_code=403)
        elif path in PUBLIC_PATHS:
            response = None
        elif session is None:
            if path.startswith("/api/"):
                response = JSONResponse({"error_code": "unauthorized",
                                         "description": "log in first"}, status_code=401)
            else:
                response = RedirectResponse("/login", status_code=303)
        elif request.method not in SAFE_METHODS and not secrets.compare_digest(
                request.headers.get("x-csrf-token", ""), session.csrf):
            response = JSONResponse({"error_code": "forbidden", "description":
                                     "missing or wrong CSRF token"}, status_code=403)
        else:
            response = None
        if response is None:
            response = await call_next(request)
        elif request.method not in SAFE_METHODS:
            # The request's body is left unread: hypercorn closes the connection once the
            # answer is sent, and a client that reused it for its next request would find it
            # gone (a race the client loses under load). Saying so makes the client open a new
            # one, and an unauthenticated body is never read.
            response.headers["connection"] = "close"
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    # ---- log in, log out ----

    @app.get("/login", response_class=HTMLResponse)
    async def login_form(request: Request):
        if request.state.session is not None:
            return RedirectResponse("/", status_code=303)
        # The token already given, if any: a browser that loads /login twice (another tab, a
        # favicon redirected here) must not invalidate the form it shows.
        token = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
        response = HTMLResponse(login_page(token))
        set_cookie(response, LOGIN_COOKIE, token)
        return response

    @app.get("/favicon.ico")
    async def favicon():
        return Response(status_code=204)

    @app.post("/login")
    async def login(request: Request):
        body = await request.body()
        if len(body) > MAX_LOGIN_FORM:
            return JSONResponse({"error_code": "too_large", "description":
                                 "the log-in form is too large"}, status_code=413)
        form = {k: v[0] for k, v in parse_qs(body.decode(errors="replace"),
                                              keep_blank_values=True).items()}
        username, password = form.get("username", ""), form.get("password", "")
        expected = request.cookies.get(LOGIN_COOKIE, "")
        if not expected or not secrets.compare_digest(form.get("csrf_token", ""), expected):
            error, status = "the log-in form expired: try again", 403
        elif not username or not password:
            error, status = "give the user name and the password", 400
        else:
            error = await server.check_login(username, password)
            status = 401 if error == "wrong user name or password" else 503
        if error:
            log.info("log-in refused for %r: %s", username, error)
            token = secrets.token_urlsafe(24)
            response = HTMLResponse(login_page(token, error, username), status_code=status)
            set_cookie(response, LOGIN_COOKIE, token)
            return response
        token, _ = sessions.open(username, password)
        log.info("%s logged in", username)
        response = RedirectResponse("/", status_code=303)
        set_cookie(response, SESSION_COOKIE, token)
        response.delete_cookie(LOGIN_COOKIE, path="/")
        return response

    @app.post("/logout")
    async def logout(request: Request):
        sessions.close(request.cookies.get(SESSION_COOKIE))
        response = JSONResponse({"logged_out": True})
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    # ---- the front end ----

    @app.get("/")
    async def index():
        return FileResponse(UI_DIR / "index.html", media_type="text/html")

    @app.get("/api/session")
    async def whoami(request: Request):
        session: Session = request.state.session
        return {"username": session.username, "csrf_token": session.csrf,
                "node_uid": server.config.uid}

    @app.get("/api/openapi.json")
    async def rest_description(request: Request):
        """The REST API's OpenAPI document: the database form's choices, defaults and help."""
        return await rest(request, "/openapi.json")

    @app.api_route("/api/v1/{path:path}", methods=["GET", "POST", "PUT", "DELETE"])
    async def rest_v1(path: str, request: Request):
        return await rest(request, f"/v1/{path}")

    async def rest(request: Request, path: str) -> Response:
        session: Session = request.state.session
        try:
            reply = await server.rest_call(session, request.method, path,
                                           request.url.query.encode(), await request.body(),
                                           request.headers.get("content-type"))
        except httpx.TransportError as exc:
            return JSONResponse({"error_code": "rest_unavailable", "description":
                                 f"the REST API of node {server.config.uid} does not answer "
                                 f"({type(exc).__name__})"}, status_code=503)
        if reply.status_code == 401:            # the password changed since the log-in
            sessions.close_user(session.username, session.password)
        return Response(reply.content, status_code=reply.status_code,
                        media_type=reply.headers.get("content-type", "application/json"))

    app.mount("/static", StaticFiles(directory=UI_DIR), name="static")
    return app


main = service_command("cm_server", CmServer)

if __name__ == "__main__":
    main()
