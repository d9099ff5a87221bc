"""The HTTP side of `temde serve`: the standard library's ThreadingHTTPServer, routes, limits, JSON errors.

Routes (every one a fixed pattern; an id is digits, a file name is a key of the shipped assets):

    GET  /                    the page (static/index.html); /?q=TEXT opens with that search done
    GET  /static/NAME         the page's script and style, shipped in the package
    GET  /thumb/ID            thumbnail of indexed image ID
    GET  /api/health          what is loaded
    GET  /api/search?q=&k=    text -> images
    GET  /api/image/ID?k=     indexed image -> captions + similar images
    POST /api/image?k=        uploaded picture (the request body: the image file's bytes) -> the same

Safety: nothing in a request is ever used as a path. A `..` path segment anywhere in the path or in any query
parameter is answered 404 before routing, so it reads nothing. Query text, request bodies and uploaded pictures
have size limits (413). Every error is one JSON object {"error": "..."}, and a failed request leaves the server
as it was.
"""
from __future__ import annotations

import json
import re
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from temde.errors import TemdeError
from temde.index.two_stage import QueryError
from temde.serve.engine import SearchEngine
from temde.serve.upload import UploadError, UploadTooLarge

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "style.css": "text/css; charset=utf-8"}
# The page may load only its own script, style and images: no script from anywhere else, nothing inline.
PAGE_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
               "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
_TRAVERSAL = re.compile(r"(^|[/\\])\.\.([/\\]|$)")
_IMAGE_ROUTE = re.compile(r"/api/image/([0-9]{1,10})")
_THUMB_ROUTE = re.compile(r"/thumb/([0-9]{1,10})")


@dataclass(frozen=True)
class Limits:
    max_query_chars: int = 1000  # a caption is ~12 words; a thousand characters is already an essay
    max_upload_bytes: int = 16 << 20  # a phone photo is 3-8 MB
    max_query_fields: int = 16  # query-string parameters parsed per request


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def load_assets() -> dict[str, bytes]:
    """The page's files, read once from the installed package (package-data), never from a request path."""
    folder = resources.files("temde.serve").joinpath("static")
    return {name: folder.joinpath(name).read_bytes() for name in STATIC}


def has_traversal(text: str) -> bool:
    """A `..` segment, also once or twice percent-encoded (%2e%2e%2f, %252e...)."""
    for _ in range(3):
        if _TRAVERSAL.search(text):
            return True
        decoded = unquote(text)
        if decoded == text:
            return False
        text = decoded
    return bool(_TRAVERSAL.search(text))


class TemdeServer(ThreadingHTTPServer):
    """One engine shared by every request thread. Threads are daemons: Ctrl-C does not wait for slow clients."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], engine: SearchEngine, limits: Limits = Limits(),
                 quiet: bool = False, log_stream=None):
        if ":" in address[0]:  # an IPv6 literal such as ::1
            self.address_family = socket.AF_INET6
        self.engine = engine
        self.limits = limits
        self.quiet = quiet
        self.log_stream = log_stream or sys.stderr
        self.assets = load_assets()
        super().__init__(address, Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a page's thumbnails and a load test's clients reuse connections
    server_version = "temde-serve"
    sys_version = ""
    timeout = 30  # seconds a connection may sit idle or trickle a request before its thread gives up
    server: TemdeServer

    # ---------------------------------------------------------------- plumbing

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's signature)
        if not self.server.quiet:
            self.server.log_stream.write(f"{self.address_string()} - {format % args}\n")

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        self._status = code  # logged with the request's time once it is answered (_dispatch)

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload, ensure_ascii=False, allow_nan=False).encode("utf-8")
        self._send(status, body, "application/json; charset=utf-8", {"Cache-Control": "no-store"})

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message, "status": status})

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (malformed request line, header too long, unknown method) as JSON too."""
        self.close_connection = True
        self._error(code, message or HTTPStatus(code).phrase)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._dispatch()

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch()

    def _dispatch(self) -> None:
        start = time.perf_counter()
        self._status = "-"  # a keep-alive connection reuses this handler for its next request
        try:
            self._route()
        except HttpError as exc:
            self._error(exc.status, str(exc))
        except UploadTooLarge as exc:
            self._error(413, str(exc))
        except (QueryError, UploadError) as exc:
            self._error(400, str(exc))
        except TemdeError as exc:  # the server's own data went wrong (a changed data folder): say which file
            self._error(500, str(exc))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client left; nothing to answer
        except Exception:  # a bug: log it, answer one line, keep serving
            traceback.print_exc(file=self.server.log_stream)
            self._error(500, "internal error (logged by the server)")
        self.log_message('"%s" %s %.1f ms', self.requestline[:200], self._status, 1000 * (time.perf_counter() - start))

    # ---------------------------------------------------------------- routing

    def _route(self) -> None:
        limits = self.server.limits
        raw = urlsplit(self.path)
        path = unquote(raw.path)
        try:
            params = parse_qs(raw.query, keep_blank_values=True, max_num_fields=limits.max_query_fields)
        except ValueError:
            self._discard_body()
            raise HttpError(413, f"more than {limits.max_query_fields} query parameters") from None
        values = [text for key, texts in params.items() for text in (key, *texts)]
        if has_traversal(raw.path) or any(has_traversal(text) for text in values):
            self._discard_body()
            raise HttpError(404, "not found")
        post = self.command == "POST"
        if post and path != "/api/image":
            self._discard_body()
            known = path in ("/", "/index.html", "/api/health", "/api/search") or _IMAGE_ROUTE.fullmatch(path)
            raise HttpError(405 if known else 404, f"POST is not accepted at {path}" if known else "not found")
        engine = self.server.engine
        if path == "/api/image":
            if not post:
                raise HttpError(405, "upload a picture with POST /api/image (the image file's bytes as the body)")
            return self._json(200, engine.search_upload(self._read_body(), self._k(params)))
        if path in ("/", "/index.html"):
            return self._asset("index.html")
        if path.startswith("/static/"):
            name = path[len("/static/"):]
            if name not in STATIC or name == "index.html":
                raise HttpError(404, "not found")
            return self._asset(name)
        if path == "/api/health":
            return self._json(200, engine.health())
        if path == "/api/search":
            text = self._param(params, "q")
            if text is None:
                raise QueryError("give the query text as ?q=TEXT")
            if len(text) > limits.max_query_chars:
                raise HttpError(413, f"query is {len(text)} characters, over the {limits.max_query_chars} limit")
            return self._json(200, engine.search_text(text, self._k(params)))
        match = _IMAGE_ROUTE.fullmatch(path)
        if match:
            image_id = int(match.group(1))
            if not engine.gallery.has_image(image_id):
                raise HttpError(404, f"no image {image_id}")
            return self._json(200, engine.search_image(image_id, self._k(params)))
        match = _THUMB_ROUTE.fullmatch(path)
        if match:
            thumbnail = engine.gallery.thumbnail(int(match.group(1)))
            if thumbnail is None:
                raise HttpError(404, "no such image file")
            headers = {"Cache-Control": "max-age=3600", **thumbnail.headers}
            return self._send(200, thumbnail.body, thumbnail.content_type, headers)
        raise HttpError(404, "not found")

    @staticmethod
    def _param(params: dict[str, list[str]], name: str) -> str | None:
        values = params.get(name)
        return values[-1] if values else None

    def _k(self, params: dict[str, list[str]]) -> int:
        text = self._param(params, "k")
        if text is None or text == "":
            return 10
        if not re.fullmatch(r"[0-9]{1,9}", text):
            raise QueryError(f"k must be an integer in [1, {self.server.engine.max_k}], got {text[:20]!r}")
        return self.server.engine.check_k(int(text))

    def _asset(self, name: str) -> None:
        headers = {"Cache-Control": "no-cache"}
        if name == "index.html":
            headers["Content-Security-Policy"] = PAGE_POLICY
        self._send(200, self.server.assets[name], STATIC[name], headers)

    # ---------------------------------------------------------------- request bodies

    def _content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        if value is None:
            return None
        if not value.strip().isdigit():
            raise HttpError(400, f"bad Content-Length {value[:20]!r}")
        return int(value)

    def _discard_body(self) -> None:
        """A request we refuse may still carry a body: drop the connection rather than read it."""
        if self.headers.get("Content-Length") not in (None, "0") or self.headers.get("Transfer-Encoding"):
            self.close_connection = True

    def _read_body(self) -> bytes:
        limit = self.server.limits.max_upload_bytes
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise HttpError(411, "send the upload with a Content-Length (chunked bodies are not accepted)")
        length = self._content_length()
        if length is None:
            self.close_connection = True
            raise HttpError(411, "send the upload with a Content-Length")
        if length > limit:
            self.close_connection = True  # the unread body must not be parsed as the next request
            raise HttpError(413, f"upload is {length:,} bytes, over the {limit:,} byte limit")
        body = self.rfile.read(length)
        if len(body) != length:
            self.close_connection = True
            raise UploadError(f"upload ended after {len(body)} of {length} bytes")
        return body


def make_server(engine: SearchEngine, host: str = "127.0.0.1", port: int = 8000, limits: Limits = Limits(),
                quiet: bool = False, log_stream=None) -> TemdeServer:
    """Bind (port 0: any free port; see `.url`); call `serve_forever()`, or `start_in_thread()` in tests."""
    return TemdeServer((host, port), engine, limits, quiet, log_stream)


def start_in_thread(server: TemdeServer) -> threading.Thread:
    """Serve from a daemon thread; stop with `server.shutdown(); server.server_close()`."""
    thread = threading.Thread(target=server.serve_forever, name="temde-serve", daemon=True)
    thread.start()
    return thread
