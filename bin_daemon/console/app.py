"""The web console's HTTP side: the only module importing FastAPI, uvicorn, Jinja2 and
python-multipart.

Pages (server-rendered Jinja2; ``static/console.js`` polls with plain ``fetch``, no build
step, no CDN) and the JSON API behind them. What they show and do is in ``state.py``; who may
ask is in ``security.py``. :func:`serve` runs uvicorn on a socket the service has bound, in
the service's own thread, without signal handlers of its own.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from python_multipart.multipart import Field as FormField
from python_multipart.multipart import File as FormFile
from python_multipart.multipart import FormParserError, create_form_parser
from starlette.concurrency import run_in_threadpool

from bin_daemon import __version__
from bin_daemon.console.security import Gate, RequestBudget, csrf_ok, safe_next, same_origin
from bin_daemon.console.state import (
    ClassifyResult,
    Console,
    ConsoleError,
    Correction,
    CorrectionResult,
    Item,
    ReviewList,
    Status,
)
from bin_daemon.console.taught import RemovedExample, TaughtList

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
COOKIE = "bin_console"
PUBLIC = ("/login", "/static/")
UNMETERED = ("/static/", "/frames/", "/taught-frames/")
UPLOADS = ("/classify", "/api/classify")
"""Where a request body may be large (read with the upload cap); elsewhere MAX_FORM_BYTES."""
MAX_FORM_BYTES = 64 * 1024
MAX_CONNECTIONS = 32
"""uvicorn answers 503 beyond this many open connections."""
"""Not counted against the request budget: files, no work in Python beyond a lookup."""
CSRF_HEADER = "x-csrf-token"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # not no-referrer: with it browsers send "Origin: null" on forms, which the CSRF check refuses
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


class Settings:
    """The parts of ``console`` config the HTTP side needs."""

    def __init__(
        self,
        *,
        refresh_s: float = 2.0,
        bin_name: str = "bin-daemon",
        max_requests_per_s: float = 10.0,
        queue_s: float = 2.0,
    ) -> None:
        self.refresh_s = refresh_s
        self.bin_name = bin_name
        self.max_requests_per_s = max_requests_per_s
        self.queue_s = queue_s
        """A request over the budget waits up to this long for its turn, then gets a 429."""


def create_app(
    console: Console,
    gate: Gate,
    settings: Settings | None = None,
    *,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> FastAPI:
    """The console's web app. ``clock`` and ``sleep``: for the request budget (tests)."""
    settings = settings or Settings()
    budget = RequestBudget(
        settings.max_requests_per_s,
        burst=max(1.0, 3 * settings.max_requests_per_s),
        clock=clock or time.monotonic,
    )
    partial: dict[str, Any] = {}
    app = FastAPI(
        title="bin-daemon console",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["when"] = when
    templates.env.filters["duration"] = duration
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    def page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        session = getattr(request.state, "session", None)
        base = {
            "csrf": session.csrf if session is not None else "",
            "logged_in_by_cookie": session is not None,
            "refresh_ms": int(settings.refresh_s * 1000),
            "bin_name": settings.bin_name,
            "version": __version__,
            "active": name.removesuffix(".html"),
            "to_review": _to_review(console) if name != "login.html" else 0,
        }
        return templates.TemplateResponse(
            request, name, {**base, **context}, status_code=status_code
        )

    # -- the gate: every request but the login page and the static files -----------------

    @app.middleware("http")
    async def gate_keeper(request: Request, call_next: Callable[[Request], Any]) -> Response:
        path = request.url.path
        if not path.startswith(UNMETERED):
            wait = budget.take()
            waited = 0.0
            while wait > 0 and waited + wait <= settings.queue_s:  # hold it; costs no CPU
                await sleep(wait)
                waited += wait
                wait = budget.take()
            if wait > 0:
                return _secure(
                    JSONResponse(
                        {"detail": "too many requests: the bin is busy sorting; slow down"},
                        status_code=429,
                        headers={"Retry-After": str(max(1, round(wait)))},
                    ),
                    path,
                )
        if request.method not in ("GET", "HEAD") and path not in UPLOADS:
            too_big = _check_small_body(request)
            if too_big is not None:
                return _secure(too_big, path)
        if not path.startswith(PUBLIC):
            denied = _authenticate(request, gate)
            if denied is not None:
                return _secure(denied, path)
            if request.method not in ("GET", "HEAD"):
                refused = _check_cross_site(request)
                if refused is not None:
                    return _secure(refused, path)
        elif request.method == "POST":
            refused = _check_cross_site(request, need_token=False)
            if refused is not None:
                return _secure(refused, path)
        response = await call_next(request)
        return _secure(response, path)

    @app.exception_handler(ConsoleError)
    async def console_error(request: Request, error: ConsoleError) -> Response:
        if _wants_html(request):
            return page(request, "error.html", error.status, message=str(error))
        return JSONResponse({"detail": str(error)}, status_code=error.status)

    # -- login ---------------------------------------------------------------------------

    @app.get("/login", response_class=HTMLResponse)
    def login_page(request: Request, next: str = "/") -> Response:
        return page(request, "login.html", next=safe_next(next), message=None)

    @app.post("/login")
    async def login(request: Request) -> Response:
        form = await request.form(max_files=0, max_fields=4)
        password = str(form.get("password") or "")
        target = safe_next(str(form.get("next") or "/"))
        verdict = gate.attempt(_client(request), password)
        if not verdict.ok:
            if verdict.retry_after_s:
                message = f"Too many wrong passwords: try again in {verdict.retry_after_s:.0f} s."
                response = page(request, "login.html", 429, next=target, message=message)
                response.headers["Retry-After"] = str(int(verdict.retry_after_s + 1))
                return response
            log.warning("console: wrong password from %s", _client(request))
            return page(request, "login.html", 401, next=target, message="Wrong password.")
        session = gate.open_session()
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            COOKIE,
            session.token,
            max_age=int(gate.session_s),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        gate.close_session(request.cookies.get(COOKIE))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    # -- pages ---------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse)
    def status_page(request: Request) -> Response:
        return page(request, "status.html", status=console.status())

    @app.get("/partials/status", response_class=HTMLResponse)
    def status_partial(request: Request) -> Response:
        status = console.status()
        if partial.get("status") is not status:  # render each snapshot once
            html = templates.get_template("_status.html").render(status=status)
            partial.update(status=status, html=html)
        return HTMLResponse(partial["html"])

    @app.get("/review", response_class=HTMLResponse)
    def review_page(request: Request, show: str = "todo") -> Response:
        pending = show != "all"
        return page(request, "review.html", review=console.review(pending_only=pending), show=show)

    @app.get("/classify", response_class=HTMLResponse)
    def classify_page(request: Request) -> Response:
        return page(request, "classify.html", result=None, thumbnail=None, error=None)

    @app.post("/classify", response_class=HTMLResponse)
    async def classify_form(request: Request) -> Response:
        try:
            fields, data, name = await _read_upload(request, console.max_upload_bytes)
            session = getattr(request.state, "session", None)
            if session is not None and not csrf_ok(session, fields.get("csrf_token")):
                raise ConsoleError(403, "The form expired: reload the page and try again.")
            result, thumbnail = await run_in_threadpool(console.classify, data, name)
        except ConsoleError as error:  # shown on the page, above the form
            return page(
                request,
                "classify.html",
                error.status,
                result=None,
                thumbnail=None,
                error=str(error),
            )
        picture = "data:image/jpeg;base64," + base64.b64encode(thumbnail).decode("ascii")
        return page(request, "classify.html", result=result, thumbnail=picture, error=None)

    @app.get("/taught", response_class=HTMLResponse)
    def taught_page(request: Request, limit: int = 60) -> Response:
        return page(request, "taught.html", taught=console.taught(limit))

    @app.get("/events", response_class=HTMLResponse)
    def events_page(request: Request, since: str = "1d", limit: int = 200) -> Response:
        error = None
        items: list[Item] = []
        try:
            items = console.events(since, limit)
        except ConsoleError as problem:
            error = str(problem)
        return page(
            request,
            "events.html",
            400 if error else 200,
            items=items,
            since=since,
            limit=limit,
            error=error,
        )

    # -- the API -------------------------------------------------------------------------

    @app.get("/api/status", response_model=Status)
    def api_status() -> Status:
        return console.status()

    @app.get("/api/events", response_model=list[Item])
    def api_events(since: str | None = None, limit: int = 200) -> list[Item]:
        return console.events(since, limit)

    @app.get("/api/events.csv")
    def api_events_csv(since: str | None = None) -> Response:
        lines = console.events_csv(since)
        first = next(lines)  # a bad `since` fails here, before the response starts
        stamp = (since or "all").replace(":", "").replace("/", "")[:20]

        def body() -> Any:
            yield first
            yield from lines

        return StreamingResponse(
            body(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="bin-events-{stamp}.csv"'},
        )

    @app.get("/api/review", response_model=ReviewList)
    def api_review(show: str = "all", limit: int = 60) -> ReviewList:
        return console.review(limit=max(1, min(limit, 500)), pending_only=show == "todo")

    @app.post("/api/review/{item_id}", response_model=CorrectionResult)
    def api_correct(item_id: str, correction: Correction) -> CorrectionResult:
        return console.correct(item_id, correction.label)

    @app.post("/api/classify", response_model=ClassifyResult)
    async def api_classify(request: Request) -> ClassifyResult:
        _fields, data, name = await _read_upload(request, console.max_upload_bytes)
        result, _thumbnail = await run_in_threadpool(console.classify, data, name)
        return result

    @app.get("/api/taught", response_model=TaughtList)
    def api_taught(limit: int = 60) -> TaughtList:
        return console.taught(limit)

    @app.post("/api/taught/{example_id}/remove", response_model=RemovedExample)
    def api_untaught(example_id: int) -> RemovedExample:
        return console.untaught(example_id)

    @app.get("/taught-frames/{name}")
    def taught_frame(name: str) -> Response:
        number, dot, suffix = name.rpartition(".")
        jpeg = (
            console.taught_jpeg(int(number))
            if dot and suffix == "jpg" and number.isdigit()
            else None
        )
        if jpeg is None:
            raise ConsoleError(404, f"no site example image {name!r}")
        return Response(
            jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"}
        )

    @app.get("/frames/{name}")
    def frame(name: str) -> Response:
        item_id, dot, suffix = name.rpartition(".")
        path = console.frame(item_id) if dot and suffix == "jpg" else None
        if path is None:
            raise ConsoleError(404, f"no frame {name!r}")
        return FileResponse(path, media_type="image/jpeg")

    return app


# -- template filters --------------------------------------------------------------------------


def when(iso: str) -> str:
    """An ISO UTC time in the bin's local time: ``14:03:07`` today, else ``2 Dec 14:03``."""
    try:
        moment = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone()
    except (ValueError, AttributeError):
        return str(iso)
    if moment.date() == datetime.now().astimezone().date():
        return moment.strftime("%H:%M:%S")
    return f"{moment.day} {moment:%b %H:%M}"


def duration(seconds: float) -> str:
    """``3 d 4 h``, ``2 h 05 min``, ``4 min 12 s``, ``12 s``."""
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def _to_review(console: Console) -> int:
    """Items waiting for a person's label, for the navigation's badge."""
    try:
        return console.review(limit=99, pending_only=True).to_review
    except Exception as error:  # a badge must not take a page down
        log.warning("console: cannot count the items to review (%s)", error)
        return 0


# -- the gate's pieces ------------------------------------------------------------------------


def _client(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def _wants_html(request: Request) -> bool:
    path = request.url.path
    if path.startswith(("/api/", "/frames/", "/taught-frames/", "/partials/")):
        return False
    return "text/html" in request.headers.get("accept", "") or request.method == "GET"


def _authenticate(request: Request, gate: Gate) -> Response | None:
    """None when the request may go on (``request.state.session`` set for a cookie)."""
    request.state.session = None
    session = gate.session(request.cookies.get(COOKIE))
    if session is not None:
        request.state.session = session
        return None
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() == "basic" and encoded:
        try:
            _user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return JSONResponse({"detail": "malformed Basic credentials"}, status_code=400)
        verdict = gate.attempt(_client(request), password)
        if verdict.ok:
            return None
        if verdict.retry_after_s:
            return JSONResponse(
                {"detail": "too many wrong passwords; try again later"},
                status_code=429,
                headers={"Retry-After": str(int(verdict.retry_after_s + 1))},
            )
        log.warning("console: wrong password from %s", _client(request))
    if _wants_html(request) and request.method == "GET":
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={_quote(target)}", status_code=303)
    headers = {} if COOKIE in request.cookies else {"WWW-Authenticate": 'Basic realm="bin-daemon"'}
    return JSONResponse(
        {"detail": "log in: HTTP Basic (any user name) or the login page"},
        status_code=401,
        headers=headers,
    )


def _check_small_body(request: Request) -> Response | None:
    """Forms and JSON: a declared length of at most MAX_FORM_BYTES (no unbounded bodies)."""
    declared = request.headers.get("content-length")
    if declared is None:
        if request.headers.get("transfer-encoding"):
            return JSONResponse({"detail": "send a Content-Length"}, status_code=411)
        return None  # no body at all
    if not declared.isdigit() or int(declared) > MAX_FORM_BYTES:
        return JSONResponse(
            {"detail": f"request body over {MAX_FORM_BYTES} bytes"}, status_code=413
        )
    return None


def _check_cross_site(request: Request, *, need_token: bool = True) -> Response | None:
    """Refuse what a browser says comes from another site; by cookie, the CSRF token too.

    Forms (``/classify``) carry the token in a field that the handler checks.
    """
    headers = request.headers
    if not same_origin(headers.get("origin"), headers.get("host"), headers.get("sec-fetch-site")):
        return JSONResponse({"detail": "cross-site request refused"}, status_code=403)
    session = getattr(request.state, "session", None)
    is_form = request.url.path in ("/classify", "/logout")
    if (
        need_token
        and session is not None
        and not is_form
        and not csrf_ok(session, headers.get(CSRF_HEADER))
    ):
        return JSONResponse(
            {"detail": f"missing or wrong {CSRF_HEADER} header (reload the page)"},
            status_code=403,
        )
    return None


def _secure(response: Response, path: str) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if not path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "no-store")
    return response


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="/")


async def _read_upload(request: Request, cap: int) -> tuple[dict[str, str], bytes, str]:
    """A multipart upload read into memory, refused as soon as it passes ``cap`` bytes.

    (form fields, the first file's bytes, its name). Nothing goes to disk.
    """
    slack = 64 * 1024  # the multipart framing and the small fields
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap + slack:
        raise ConsoleError(413, f"upload of {int(declared)} bytes is over the {cap} byte limit")
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise ConsoleError(415, "send the image as multipart/form-data (a file field)")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap + slack:
            raise ConsoleError(413, f"upload is over the {cap} byte limit")
    fields: dict[str, str] = {}
    files: list[tuple[str, bytes]] = []

    def on_field(form_field: FormField) -> None:
        if form_field.field_name and form_field.value is not None:
            fields[form_field.field_name.decode(errors="replace")] = form_field.value.decode(
                errors="replace"
            )

    def on_file(form_file: FormFile) -> None:
        handle = form_file.file_object
        handle.seek(0)
        name = (form_file.file_name or b"upload").decode(errors="replace")
        files.append((Path(name).name or "upload", handle.read()))

    try:
        parser = create_form_parser(
            {"Content-Type": content_type.encode("latin-1")},
            on_field,
            on_file,
            config={"MAX_MEMORY_FILE_SIZE": cap + slack + 1, "UPLOAD_KEEP_FILENAME": False},
        )
        parser.write(bytes(body))
        parser.finalize()
    except (FormParserError, ValueError) as error:
        raise ConsoleError(400, f"malformed multipart upload ({error})") from None
    if not files:
        raise ConsoleError(400, "no file in the upload (a multipart field with a filename)")
    name, data = files[0]
    return fields, data, name


# -- running it ------------------------------------------------------------------------------


def serve(
    sock: socket.socket,
    app: FastAPI,
    *,
    on_server: Callable[[Any], None],
    shutdown_s: float = 1.0,
) -> None:
    """Run uvicorn on an already bound socket until its ``should_exit`` is set (blocking)."""
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=int(max(1, shutdown_s)),
        server_header=False,
        proxy_headers=False,
        limit_concurrency=MAX_CONNECTIONS,
    )
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # "Started server process"
    server = uvicorn.Server(config)
    on_server(server)
    asyncio.run(server.serve(sockets=[sock]))
