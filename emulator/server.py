"""HTTP server that answers like MoySklad JSON API 1.2, with switchable network faults.

Raw http.server (not a framework) so faults can act on bytes: connection resets,
truncated bodies, latency. Paths in stats/request_log/fail_after are relative to
/api/remap/1.2 (e.g. "/entity/assortment"); other paths (/_files/...) are kept whole.
"""

from __future__ import annotations

import base64
import gzip
import hmac
import json
import random
import secrets
import threading
import time
import zlib
from collections import deque
from http.server import ThreadingHTTPServer
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from .catalog import KIND_BUNDLE, KIND_PRODUCT, KIND_SERVICE, KIND_VARIANT, Catalog, component_id, moscow_now
from .loopback import LoopbackServer, QuietHandler, abort_connection, common_control
from .protocol import EXPAND_LIMIT, ApiError, Query, parse_moment
from .render import JSON, Renderer
from .stock import GROUP_BY, STOCK_MODES, StockReport, current_rows
from .webhooks import ANSWER_WITHIN, STOCK_INTERVAL, WebhookHub

API_PREFIX = "/api/remap/1.2"
AUTH_ERROR = "Ошибка аутентификации: Неправильный пароль или имя пользователя или ключ авторизации"

RATE_LIMIT = 45  # units per window per user
RATE_WINDOW = 3.0  # seconds
PARALLEL_LIMIT = 5
STOCK_REPORT_COST = 5  # md/reports/_report_stock.md: /report/stock/all and /bystore cost 5 units from 2026-02
# md/_restrictions.md: a request with login/password or a user's token («токен пользователя») weighs 2 units from
# 2026-05-12, 3 from 2026-09-01, «с 1 декабря 2026: 1 запрос = 4 единицы → 11 запросов за 3 секунды»; the emulator's
# tokens are users' (a published solution's token stays at 1, and no solution talks to it).
USER_REQUEST_WEIGHT = {"2026-05-12": 2, "2026-09-01": 3, "2026-12-01": 4}
DOWNLOAD_LINK_TTL = 60.0  # seconds a /download redirect target stays valid
# md/_restrictions.md: "не более 8 КБ в заголовках запроса (URL, User-Agent, Authorization и т. д.)". The
# answer to more is not documented; nginx, in front of the API, refuses a long request line with 414.
HEADER_LIMIT = 8 * 1024

# The big lists, whose answers are kept rendered per catalog version: rendering 1000 rows takes the
# emulator longer than MoySklad's rate limit lets a client ask for them, so without this a benchmark
# would measure the emulator.
RENDERED_LISTS = ("/entity/assortment", "/entity/bundle", "/entity/productfolder", "/report/stock/all")
ENTITY_KINDS = {"product": KIND_PRODUCT, "variant": KIND_VARIANT, "service": KIND_SERVICE, "bundle": KIND_BUNDLE}
# spec components parameter `fields` (GET /entity/product, /entity/variant, their {id} and .../images): its enum;
# «В одном запросе можно передать только одно значение»
FIELDS = ("minimumStock", "downloadPermanentHref", "stock", "declaration")
FIELDS_KINDS = (KIND_PRODUCT, KIND_VARIANT)
WEBHOOK_KINDS = ("webhook", "webhookstock")
# How a truncated answer is framed: "close" (no length, the body ends where the connection does: the
# client decodes a gzip prefix and meets an unterminated JSON), "length" (the full Content-Length is
# announced, fewer bytes arrive) or "chunked" (the terminating chunk never comes).
TRUNCATE_FRAMINGS = ("close", "length", "chunked")
GZIP_FLUSHES = 8  # a truncated answer is a gzip stream flushed this many times; it is cut after half of them
PROXY_503 = (b"<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n"
             b"<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n<hr><center>nginx</center>\r\n"
             b"</body>\r\n</html>\r\n")
PROXY_414 = (b"<html>\r\n<head><title>414 Request-URI Too Large</title></head>\r\n<body>\r\n"
             b"<center><h1>414 Request-URI Too Large</h1></center>\r\n<hr><center>nginx</center>\r\n"
             b"</body>\r\n</html>\r\n")


class Faults:
    """Fault switches; all randomness comes from one seeded generator so runs are reproducible."""

    FIELDS = ("latency_ms", "error_rate", "reset_rate", "truncate_rate", "truncate_framing", "fail_after", "seed")

    def __init__(self):
        self._lock = threading.Lock()
        self.latency_ms = 0
        self.error_rate = 0.0
        self.reset_rate = 0.0
        self.truncate_rate = 0.0
        self.truncate_framing = "close"
        self.fail_after: dict | None = None
        self._successes = 0
        self.seed = 0

    @property
    def seed(self) -> int:
        return self._seed

    @seed.setter
    def seed(self, value: int) -> None:
        self._seed = value
        self._rng = random.Random(value)

    def __setattr__(self, name, value):
        if name == "truncate_framing" and value not in TRUNCATE_FRAMINGS:
            raise ValueError(f"truncate_framing must be one of {TRUNCATE_FRAMINGS}")
        if name == "fail_after":
            object.__setattr__(self, "_successes", 0)
        object.__setattr__(self, name, value)

    def update(self, values: dict) -> None:
        unknown = set(values) - set(self.FIELDS)
        if unknown:
            raise ValueError(f"unknown fault switches: {sorted(unknown)}")
        for name, value in values.items():
            setattr(self, name, value)

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.FIELDS}

    def draw(self) -> tuple[bool, int | None, bool]:
        """(reset, injected error status, truncate) for one request."""
        with self._lock:
            rng = self._rng
            reset = rng.random() < self.reset_rate
            error = rng.choice((500, 502, 503)) if rng.random() < self.error_rate else None
            truncate = rng.random() < self.truncate_rate
        return reset, error, truncate

    def outage_status(self, path: str) -> int | None:
        rule = self.fail_after
        if rule and path.startswith(rule["path"]) and self._successes >= rule["after"]:
            return int(rule.get("status", 500))
        return None

    def count_success(self, path: str, status: int) -> None:
        rule = self.fail_after
        if rule and path.startswith(rule["path"]) and 200 <= status < 400:
            with self._lock:
                self._successes += 1


class RateLimiter:
    """Sliding-window units and parallel-request counts per user (the key authenticate gives)."""

    def __init__(self, units_limited: bool = True):
        self._lock = threading.Lock()
        self._windows: dict[str, deque] = {}
        self._in_flight: dict[str, int] = {}
        # False only for a benchmark that measures the client's own CPU ("limits off"): no units are
        # counted and no rate headers sent; the parallel limit stays.
        self.units_limited = units_limited

    def _used(self, window: deque, now: float) -> int:
        while window and window[0][0] <= now - RATE_WINDOW:
            window.popleft()
        return sum(cost for _, cost in window)

    def acquire(self, key: str, cost: int) -> dict:
        """Reserve a parallel slot and `cost` units, or raise the 429 ApiError; returns rate headers."""
        now = time.monotonic()
        with self._lock:
            window = self._windows.setdefault(key, deque())
            used = self._used(window, now)
            if self._in_flight.get(key, 0) >= PARALLEL_LIMIT:  # md/_errors.md #1073; md/_general.md: «Заголовки
                # не отображают лимиты на параллельные запросы»: the headers tell the unit budget, as always
                raise ApiError(429, 1073, "Превышено ограничение на одновременное количество запросов",
                               headers=self._headers(window, used, now))
            if not self.units_limited:
                self._in_flight[key] = self._in_flight.get(key, 0) + 1
                return {}
            if used + cost > RATE_LIMIT:
                freed, retry_after = 0, 0.0
                for moment, units in window:
                    freed += units
                    if used - freed + cost <= RATE_LIMIT:
                        retry_after = (moment + RATE_WINDOW - now) * 1000
                        break
                raise ApiError(429, 1049, "Превышено ограничение на количество запросов в единицу времени",
                               headers=self._headers(window, used, now, retry_after=retry_after))
            window.append((now, cost))
            self._in_flight[key] = self._in_flight.get(key, 0) + 1
            return self._headers(window, used + cost, now)

    def release(self, key: str) -> None:
        with self._lock:
            self._in_flight[key] -= 1

    def _headers(self, window: deque, used: int, now: float, retry_after: float | None = None) -> dict:
        reset = max(0.0, (window[-1][0] + RATE_WINDOW - now) * 1000) if window else 0.0
        headers = {"X-RateLimit-Limit": str(RATE_LIMIT),
                   "X-RateLimit-Remaining": str(0 if retry_after is not None else max(0, RATE_LIMIT - used)),
                   "X-Lognex-Retry-TimeInterval": str(int(RATE_WINDOW * 1000)), "X-Lognex-Reset": str(int(reset))}
        if retry_after is not None:
            headers["X-Lognex-Retry-After"] = str(max(1, int(retry_after)))
        return headers


class EmulatorServer(LoopbackServer):
    """A MoySklad look-alike on a real socket; see the module docstring of emulator for the API."""

    thread_name = "moysklad-emulator"

    def __init__(self, catalog: Catalog, host: str = "127.0.0.1", port: int = 0, token: str = "emu-token",
                 login: str = "admin@emu", password: str = "emu-pass", webhook_interval: float = STOCK_INTERVAL,
                 webhook_timeout: float = ANSWER_WITHIN, other_tokens: tuple[str, ...] = (),
                 rate_limited: bool = True):
        self.catalog = catalog
        self.token, self.login, self.password = token, login, password
        # DOMAIN.md: «45 units per 3 s counted per user …; 5 parallel requests per user»: the token and the
        # login/password are one user's, so both count under this key (kept when set_credentials renames)
        self.user_key = "user:" + login
        # More users' tokens (one emulator standing in for many accounts, as a benchmark of many clients
        # needs): each has a rate budget and parallel slots of its own, as MoySklad counts them per user.
        self.other_tokens = frozenset(other_tokens)
        self.faults = Faults()
        self.rate_limiter = RateLimiter(units_limited=rate_limited)
        self.started = moscow_now()
        self._lock = threading.Lock()
        self._list_cache: dict = {}
        self._answers: dict[tuple, bytes] = {}  # see rendered_answer
        self._download_links: dict[str, tuple[str, float]] = {}
        self._in_flight = 0
        self.reset_stats()
        self.httpd = ThreadingHTTPServer((host, port), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.emulator = self
        bound_host, bound_port = self.httpd.server_address[:2]
        self.origin = f"http://{bound_host}:{bound_port}"
        self.base_url = self.origin + API_PREFIX
        self.renderer = Renderer(catalog, self.origin)
        # stock webhooks go out every webhook_interval seconds (MoySklad: 1-5 minutes)
        self.webhooks = WebhookHub(catalog, self.base_url, login, stock_interval=webhook_interval,
                                   answer_within=webhook_timeout)

    # -- lifecycle: the loopback server's, with the webhook sender beside it -----------------------

    def start(self) -> "EmulatorServer":
        self.webhooks.start()
        return super().start()

    def serve_until_interrupted(self) -> None:
        self.webhooks.start()
        try:
            super().serve_until_interrupted()
        finally:
            self.webhooks.stop()

    def stop(self) -> None:
        super().stop()
        self.webhooks.stop()

    def close(self) -> None:
        self.webhooks.stop()
        self.httpd.server_close()

    def set_credentials(self, token: str | None = None, login: str | None = None, password: str | None = None) -> None:
        """Change accepted credentials at runtime (a running client then gets 401)."""
        with self._lock:
            if token is not None:
                self.token = token
            if login is not None:
                self.login = login
            if password is not None:
                self.password = password

    # -- stats --------------------------------------------------------------------------------

    def reset_stats(self) -> None:
        with self._lock:
            self.stats = {"requests": 0, "by_path": {}, "status": {}, "throttled": 0, "max_in_flight": 0}
            self.request_log: list[dict] = []

    def _enter(self) -> None:
        with self._lock:
            self._in_flight += 1
            self.stats["max_in_flight"] = max(self.stats["max_in_flight"], self._in_flight)

    def _leave(self, entry: dict) -> None:
        with self._lock:
            self._in_flight -= 1
            stats = self.stats
            stats["requests"] += 1
            stats["by_path"][entry["path"]] = stats["by_path"].get(entry["path"], 0) + 1
            stats["status"][entry["status"]] = stats["status"].get(entry["status"], 0) + 1
            if entry["status"] == 429:
                stats["throttled"] += 1
            self.request_log.append(entry)

    def stats_snapshot(self) -> dict:
        with self._lock:
            return json.loads(json.dumps(self.stats))

    # -- auth ---------------------------------------------------------------------------------

    def authenticate(self, header: str | None) -> tuple[str, str]:
        """(auth kind, rate-limit key: the user's, whichever of their credentials came) or 401."""
        scheme, _, value = (header or "").partition(" ")
        if scheme.lower() == "bearer" and _same(value.strip(), self.token):
            return "bearer", self.user_key
        if scheme.lower() == "bearer" and value.strip() in self.other_tokens:
            return "bearer", "token:" + value.strip()  # another user's (see other_tokens)
        if scheme.lower() == "basic":
            try:
                login, _, password = base64.b64decode(value.strip()).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                login, password = "", None
            if _same(login, self.login) & _same(password, self.password):  # both compared, each in constant time
                return "basic", self.user_key
        raise ApiError(401, 1056, AUTH_ERROR, headers={
            "X-Lognex-Auth": "-1056",
            "X-Lognex-Auth-Message": quote("Неправильный пароль или имя пользователя или ключ авторизации")})

    # -- downloads ----------------------------------------------------------------------------

    def issue_download_link(self, image_id: str) -> str:
        now = time.monotonic()
        with self._lock:
            if len(self._download_links) > 10000:
                self._download_links = {k: v for k, v in self._download_links.items() if v[1] > now}
            link = secrets.token_urlsafe(16)
            self._download_links[link] = (image_id, now + DOWNLOAD_LINK_TTL)
        return f"{self.origin}/_files/{link}"

    def resolve_download_link(self, link: str) -> str | None:
        with self._lock:
            image_id, expires = self._download_links.get(link, (None, 0.0))
        return image_id if expires > time.monotonic() else None

    # -- list caching ---------------------------------------------------------------------------

    def rendered_answer(self, key: tuple | None) -> bytes | None:
        """The gzip body sent before for this key (see _Handler.answer_key), if any."""
        if key is None:
            return None
        with self._lock:
            return self._answers.get(key)

    def keep_answer(self, key: tuple, compressed: bytes) -> None:
        with self._lock:
            if any(old[4] != key[4] or old[5] != key[5] for old in self._answers):
                self._answers.clear()  # the catalog changed (or the day, for stockDays): all of them are old
            self._answers[key] = compressed

    def cached(self, key: tuple, build) -> list:
        """Filtered row lists keyed by the query and the catalog version, so paging stays O(page)."""
        key = key + (self.catalog.version,)
        with self._lock:
            rows = self._list_cache.get(key)
        if rows is None:
            with self.catalog.lock:
                rows = build()
            with self._lock:
                if len(self._list_cache) > 32:
                    self._list_cache.clear()
                self._list_cache[key] = rows
        return rows


class _Handler(QuietHandler):
    delay_ms = 0
    entry: dict | None = None
    rate_key: str | None = None
    request_body = b""

    def do_PUT(self):
        self.dispatch("PUT")

    def do_DELETE(self):
        self.dispatch("DELETE")

    def do_PATCH(self):
        self.dispatch("PATCH")

    def finish(self):
        try:
            super().finish()
        except (OSError, ValueError):
            pass

    @property
    def emulator(self) -> EmulatorServer:
        return self.server.emulator

    # -- entry point ----------------------------------------------------------------------------

    def dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method in ("POST", "PUT", "PATCH") else b""
        if url.path.startswith("/_emulator/"):
            return self.control(method, url.path, body)
        emulator = self.emulator
        is_api = url.path.startswith(API_PREFIX + "/") or url.path == API_PREFIX
        path = url.path[len(API_PREFIX):] if is_api else url.path
        entry = {"t": time.monotonic(), "method": method, "path": path,
                 "query": dict(parse_qsl(url.query, keep_blank_values=True)), "status": None, "cost": 0, "auth": None}
        self.entry, self.rate_key = entry, None
        emulator._enter()
        try:
            if is_api and self.header_bytes() > HEADER_LIMIT:
                entry["status"] = 414
                self.send_bytes(414, PROXY_414, {"Content-Type": "text/html"})
            elif not is_api:
                self.serve_file(path, entry)
            else:
                self.api(method, path, url.query, body, entry)
        finally:
            self.settle()

    def header_bytes(self) -> int:
        """The request line and headers as they came (what MoySklad's 8 KB limit counts)."""
        return len(self.raw_requestline) + sum(len(name) + len(value) + 4 for name, value in self.headers.items())

    def settle(self) -> None:
        """Account for the request once, before its response bytes leave: stats, log, parallel slot."""
        if self.entry is not None:
            self.emulator._leave(self.entry)
            self.entry = None
        if self.rate_key is not None:
            self.emulator.rate_limiter.release(self.rate_key)
            self.rate_key = None

    def api(self, method: str, path: str, raw_query: str, body: bytes, entry: dict) -> None:
        emulator = self.emulator
        faults = emulator.faults
        reset, injected, truncate = faults.draw()
        self.delay_ms = faults.latency_ms
        if reset:
            entry["status"] = 0
            return self.reset_connection()
        outage = faults.outage_status(path)
        if injected or outage:
            entry["status"] = injected or outage
            return self.send_fault(injected or outage)
        if "gzip" not in (self.headers.get("Accept-Encoding") or "").lower():
            entry["status"] = 415
            return self.send_bytes(415, b"", {"Content-Type": "application/json;charset=utf-8"})
        try:
            entry["auth"], key = emulator.authenticate(self.headers.get("Authorization"))
            if path == "/security/token":
                if method != "POST":
                    raise ApiError(405, 1039, f"Операция {method} не поддерживается для данного ресурса")
                if entry["auth"] != "basic":
                    raise ApiError(401, 1056, AUTH_ERROR, headers={"X-Lognex-Auth": "-1056"})
            cost = STOCK_REPORT_COST if path.rstrip("/") in ("/report/stock/all", "/report/stock/bystore") else 1
            today = moscow_now().date().isoformat()
            cost = max([cost, *(weight for since, weight in USER_REQUEST_WEIGHT.items() if today >= since)])
            rate_headers = emulator.rate_limiter.acquire(key, cost)
            self.rate_key = key
        except ApiError as error:
            entry["status"] = error.status
            return self.send_json(error.status, error.body(), error.headers, truncate)
        entry["cost"] = cost
        answer_key = self.answer_key(method, path, raw_query)
        compressed = emulator.rendered_answer(answer_key)
        try:
            status, payload, headers = (200, None, {}) if compressed else self.route(method, path, raw_query, body)
        except ApiError as error:
            status, payload, headers = error.status, error.body(), error.headers
        entry["status"] = status
        faults.count_success(path, status)
        headers = {**rate_headers, **headers}
        if compressed:
            self.send_compressed(status, compressed, headers, truncate)
        elif status == 302 or payload is None:
            self.send_bytes(status, b"", headers)
        else:
            self.send_json(status, payload, headers, truncate, answer_key if status == 200 else None)

    def answer_key(self, method: str, path: str, raw_query: str) -> tuple | None:
        """What an answer of the big lists depends on: the same key, the same bytes (None: not kept)."""
        if method != "GET" or path not in RENDERED_LISTS:
            return None
        return (path, raw_query, self.headers.get("Accept"), self.headers.get("X-Lognex-Remap-Beta-Feature"),
                self.emulator.catalog.version, moscow_now().date())

    # -- transport ------------------------------------------------------------------------------

    def reset_connection(self) -> None:
        """Abort with RST: SO_LINGER 0 then close, before any response byte."""
        self.close_connection = True
        self.settle()
        abort_connection(self.connection)

    def send_fault(self, status: int) -> None:
        if status == 503:
            return self.send_bytes(503, PROXY_503, {"Content-Type": "text/html"})
        messages = {401: (1056, AUTH_ERROR),  # a token revoked mid-run: the same body as a wrong one
                    502: (1095, "Пожалуйста, повторите попытку через некоторое время. Приложение временно недоступно")}
        code, message = messages.get(status, (1999, "Неизвестная ошибка"))
        self.send_json(status, ApiError(status, code, message).body(), {})

    def send_json(self, status: int, payload, headers: dict, truncate: bool = False, answer_key: tuple | None = None) -> None:
        raw = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        headers = {"Content-Type": "application/json;charset=utf-8", "Content-Encoding": "gzip", **headers}
        compressed = gzip.compress(raw, compresslevel=5, mtime=0)
        if answer_key is not None:
            self.emulator.keep_answer(answer_key, compressed)
        if truncate:
            return self.send_truncated(status, raw, headers)
        self.send_bytes(status, compressed, headers)

    def send_compressed(self, status: int, compressed: bytes, headers: dict, truncate: bool) -> None:
        """An answer kept rendered (see EmulatorServer.rendered_answer), sent as a fresh one would be."""
        headers = {"Content-Type": "application/json;charset=utf-8", "Content-Encoding": "gzip", **headers}
        if truncate:
            return self.send_truncated(status, gzip.decompress(compressed), headers)
        self.send_bytes(status, compressed, headers)

    def send_truncated(self, status: int, raw: bytes, headers: dict) -> None:
        """What a connection cut mid-answer delivers: half of a gzip stream flushed as it went, then the close."""
        # the bytes that did arrive decode to the first half of the JSON; framing per faults.truncate_framing
        compressor = zlib.compressobj(5, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        step = max(1, -(-len(raw) // GZIP_FLUSHES))
        blocks = [compressor.compress(raw[i:i + step]) + compressor.flush(zlib.Z_SYNC_FLUSH)
                  for i in range(0, len(raw), step)]
        blocks.append(compressor.flush())
        sent = blocks[:max(1, (len(blocks) - 1) // 2)]
        framing = self.emulator.faults.truncate_framing
        self.pause()
        self.settle()
        self.close_connection = True
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if framing == "length":
            self.send_header("Content-Length", str(sum(len(block) for block in blocks)))
        elif framing == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            for block in sent:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block) if framing == "chunked" else block)
            self.wfile.flush()
        except OSError:
            pass

    def pause(self) -> None:
        """Injected latency, spent while the request still holds its parallel slot."""
        if self.delay_ms:
            time.sleep(self.delay_ms / 1000)
            self.delay_ms = 0

    def send_bytes(self, status: int, data: bytes, headers: dict) -> None:
        self.pause()
        self.settle()
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def serve_file(self, path: str, entry: dict) -> None:
        """Temporary download links, miniatures, tiny images and the permanent CDN copy: no auth.

        The log's ``auth`` of these requests is the scheme of any Authorization header received
        (a client must send none to the file host), else None.
        """
        emulator = self.emulator
        entry["auth"] = (self.headers.get("Authorization") or "").partition(" ")[0].lower() or None
        parts = path.strip("/").split("/")
        image_id = None
        if len(parts) == 3 and parts[0] == "_files" and parts[1] in ("cdn", "miniature", "tiny"):
            image_id = parts[2].removesuffix(".png")
        elif len(parts) == 2 and parts[0] == "_files":
            image_id = emulator.resolve_download_link(parts[1])
            if image_id is None and parts[1]:
                entry["status"] = 403
                return self.send_bytes(403, b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AccessDenied"
                                            b"</Code><Message>Request has expired</Message></Error>",
                                       {"Content-Type": "application/xml"})
        if image_id is None or emulator.catalog.find_image(image_id) is None:
            entry["status"] = 404
            return self.send_bytes(404, b"Not Found", {"Content-Type": "text/plain"})
        entry["status"] = 200
        self.send_bytes(200, emulator.renderer.image_bytes(image_id), {"Content-Type": "image/png"})

    def control(self, method: str, path: str, body: bytes) -> None:
        """/_emulator/*: fault switches and stats for out-of-process use (no auth)."""
        emulator = self.emulator
        try:
            payload = common_control(emulator, method, path, body)
            if payload is not None:
                pass
            elif path == "/_emulator/webhooks" and method == "GET":
                payload = {"webhook": emulator.webhooks.records("webhook"),
                           "webhookstock": emulator.webhooks.records("webhookstock"),
                           "deliveries": emulator.webhooks.deliveries}
            elif path == "/_emulator/webhooks/flush" and method == "POST":
                payload = {"queued": emulator.webhooks.flush_stock()}
            else:
                return self.send_bytes(404, b'{"error":"not found"}', {"Content-Type": "application/json"})
        except (ValueError, TypeError) as error:
            return self.send_bytes(400, json.dumps({"error": str(error)}).encode(), {"Content-Type": "application/json"})
        self.send_bytes(200, json.dumps(payload).encode(), {"Content-Type": "application/json"})

    # -- routing --------------------------------------------------------------------------------

    def route(self, method: str, path: str, raw_query: str, body: bytes = b""):
        """(status, payload, extra headers) for an authenticated API request; payload None: no body."""
        accept = self.headers.get("Accept")
        if accept and "json" not in accept and "*/*" not in accept and not path.startswith("/download/"):
            raise ApiError(400, 1062, "Неверное значение заголовка 'Accept'. Поддерживается только значение "
                                      "'application/json;charset=utf-8'")
        query = Query(raw_query)
        parts = [p for p in path.split("/") if p]
        methods, args = self.resolve(parts)
        if not methods:
            raise ApiError(404, 1002, f"Неопознанный путь: {API_PREFIX}{path}")
        if method not in methods:
            raise ApiError(405, 1039, f"Операция {method} не поддерживается для данного ресурса")
        self.request_body = body
        result = methods[method](query, path, *args)
        return result if isinstance(result, tuple) else (200, result, {})

    def resolve(self, parts: list[str]) -> tuple[dict, tuple]:
        """{HTTP method: handler} and the handler's path arguments; ({}, ()) for an unknown path."""
        fixed = {
            ("context", "companysettings"): self.company_settings,
            ("context", "companysettings", "pricetype"): self.price_types,
            ("context", "companysettings", "pricetype", "default"): self.default_price_type,
            ("context", "employee"): self.current_employee,
            ("entity", "organization"): self.organizations,
            ("entity", "currency"): self.currencies,
            ("entity", "store"): self.stores,
            ("entity", "uom"): self.uoms,
            ("entity", "productfolder"): self.folders,
            ("entity", "assortment"): self.assortment,
            ("entity", "product", "metadata", "attributes"): self.product_attributes,
            ("report", "stock", "all"): self.stock_all,
            ("report", "stock", "bystore"): self.stock_bystore,
            ("report", "stock", "all", "current"): self.stock_current,
            ("report", "stock", "bystore", "current"): self.stock_current,
        }
        key = tuple(parts)
        if key in fixed:
            return {"GET": fixed[key]}, ()
        if key == ("security", "token"):
            return {"POST": self.security_token}, ()
        if len(parts) >= 2 and parts[0] == "entity" and parts[1] in WEBHOOK_KINDS:
            # spec paths /entity/webhook(stock) (GET, POST) and /entity/webhook(stock)/{id} (GET, PUT, DELETE)
            if len(parts) == 2:
                return {"GET": self.webhook_list, "POST": self.webhook_create}, (parts[1],)
            if len(parts) == 3:
                return {"GET": self.webhook_get, "PUT": self.webhook_update, "DELETE": self.webhook_delete}, \
                    (parts[1], parts[2])
        if len(parts) >= 2 and parts[0] == "entity" and parts[1] in ENTITY_KINDS:
            kind = ENTITY_KINDS[parts[1]]
            if len(parts) == 2:
                return {"GET": self.entity_list}, (kind,)
            if len(parts) == 3:
                return {"GET": self.entity_by_id}, (kind, parts[2])
            if len(parts) == 4 and parts[3] == "images":
                return {"GET": self.images}, (kind, parts[2])
            if kind == KIND_BUNDLE and len(parts) in (4, 5) and parts[3] == "components":
                # spec /entity/bundle/{id}/components and /entity/bundle/{id}/components/{componentId}
                return {"GET": self.bundle_components}, (parts[2], *parts[4:])
        if len(parts) == 3 and parts[0] == "entity" and parts[1] == "productfolder":
            return {"GET": self.folder_by_id}, (parts[2],)
        if len(parts) == 2 and parts[0] == "download":
            return {"GET": self.download}, (parts[1],)
        return {}, ()

    # -- list helpers ---------------------------------------------------------------------------

    def href(self, path: str, query: Query) -> str:
        base = self.emulator.base_url + path
        return f"{base}?{self.encode(query.pairs)}" if query.pairs else base

    @staticmethod
    def encode(pairs) -> str:
        return urlencode(pairs, quote_via=quote, safe=";,:=")

    def page(self, path: str, query: Query, kind: str, rows: list, render, metadata: bool = True,
             context: dict | None = None) -> dict:
        limit, offset = query.paging()
        renderer = self.emulator.renderer
        meta = renderer.list_meta(self.href(path, query), kind, len(rows), limit, offset, metadata)

        def link(new_offset: int) -> str:
            pairs = [(k, v) for k, v in query.pairs if k not in ("limit", "offset")]
            pairs += [("limit", str(limit)), ("offset", str(new_offset))]
            return f"{self.emulator.base_url}{path}?{self.encode(pairs)}"

        if offset + limit < len(rows):
            meta["nextHref"] = link(offset + limit)
        if offset > 0:
            meta["previousHref"] = link(max(0, offset - limit))
        body = dict(context if context is not None else renderer.context)
        body["meta"] = meta
        body["rows"] = [render(row) for row in rows[offset:offset + limit]]
        return body

    def entity_filter(self, query: Query, extra_keys: tuple = ()):
        """Predicate for archived/updated/id (+extra) filters; default hides archived rows."""
        query.check_filter_keys(("archived", "updated", "id") + extra_keys)
        archived_values = set()
        for value in query.values("archived"):
            if value not in ("true", "false"):
                raise ApiError(400, 1014, f"Неверное значение '{value}' параметра фильтрации 'archived'",
                               parameter="filter")
            archived_values.add(value == "true")
        archived_values = archived_values or {False}
        bounds = [(op, parse_moment(value, "updated", in_filter=True)) for key, op, value in query.filters if key == "updated"]
        ids = set(query.values("id"))
        comparisons = {">=": lambda a, b: a >= b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b,
                       "<": lambda a, b: a < b, "=": lambda a, b: a == b, "!=": lambda a, b: a != b}
        for op, _ in bounds:
            if op not in comparisons:
                raise ApiError(400, 1034, f"Ошибка фильтрации: оператор '{op}' не поддерживается для поля 'updated'",
                               parameter="filter")

        def accept(record) -> bool:
            if record.archived not in archived_values:
                return False
            if ids and record.id not in ids:
                return False
            # compare at millisecond precision, as the rendered `updated` string shows it
            moment = record.updated.replace(microsecond=record.updated.microsecond // 1000 * 1000)
            return all(comparisons[op](moment, bound) for op, bound in bounds)

        key = (tuple(sorted(archived_values)), tuple(bounds), tuple(sorted(ids)))
        return accept, key

    # -- dictionaries ---------------------------------------------------------------------------

    def company_settings(self, query, path):
        return self.emulator.renderer.company_settings()

    def price_types(self, query, path):
        return self.emulator.renderer.price_type_refs

    def default_price_type(self, query, path):
        return self.emulator.renderer.price_type_refs[0]

    def current_employee(self, query, path):
        return self.emulator.renderer.employee(self.emulator.login, self.emulator.started)

    def organizations(self, query, path):
        renderer = self.emulator.renderer
        rows = list(range(len(self.emulator.catalog.ids.organizations)))
        return self.page(path, query, "organization", rows, lambda i: renderer.organization(i, self.emulator.started))

    def product_attributes(self, query, path):
        return self.emulator.renderer.attribute_metadata()

    def currencies(self, query, path):
        return self.page(path, query, "currency", [0], lambda _: self.emulator.renderer.currency())

    def stores(self, query, path):
        rows = list(range(len(self.emulator.catalog.stores)))
        return self.page(path, query, "store", rows, self.emulator.renderer.store)

    def uoms(self, query, path):
        rows = list(range(len(self.emulator.catalog.uoms)))
        return self.page(path, query, "uom", rows, self.emulator.renderer.uom)

    def folders(self, query, path):
        accept, key = self.entity_filter(query)
        rows = self.emulator.cached(("productfolder",) + key,
                                    lambda: [f for f in self.emulator.catalog.folders.values() if accept(f)])
        return self.page(path, query, "productfolder", rows, self.emulator.renderer.folder)

    def folder_by_id(self, query, path, folder_id):
        folder = self.emulator.catalog.folders.get(folder_id)
        if folder is None:
            raise ApiError(404, 1021, f"Объект с типом 'productfolder' и идентификатором '{folder_id}' не найден")
        return self.emulator.renderer.folder(folder)

    # -- assortment -----------------------------------------------------------------------------

    def items(self, kinds: tuple, query: Query, extra_keys: tuple = ()) -> list:
        accept, key = self.entity_filter(query, extra_keys)
        parents = set(query.values("productid"))
        catalog = self.emulator.catalog

        def build():
            return [item for item in catalog.items.values()
                    if item.kind in kinds and accept(item) and (not parents or item.parent_id in parents)]

        return self.emulator.cached((kinds, tuple(sorted(parents))) + key, build)

    def assortment(self, query, path):
        # spec GET /entity/assortment: groupBy, stockMode and quantityMode each have an enum (their effect on
        # the rows is not emulated)
        for name, allowed in (("groupBy", GROUP_BY), ("stockMode", STOCK_MODES), ("quantityMode", STOCK_MODES)):
            query.choice(name, allowed)
        rows = self.items((KIND_PRODUCT, KIND_VARIANT, KIND_SERVICE, KIND_BUNDLE), query)
        beta = self.headers.get("X-Lognex-Remap-Beta-Feature") or ""
        with_stock = "assortmentWithoutStock" not in beta
        renderer = self.emulator.renderer
        return self.page(path, query, "assortment", rows, lambda item: renderer.item(item, with_stock))

    def entity_list(self, query, path, kind):
        if kind in FIELDS_KINDS:
            query.choice("fields", FIELDS)
        rows = self.items((kind,), query, ("productid",) if kind == KIND_VARIANT else ())
        expand = query.expansions()  # none above limit 100, as for every expand
        return self.page(path, query, kind, rows, lambda item: self.emulator.renderer.item(item, expand=expand))

    def find(self, kind: str, item_id: str):
        item = self.emulator.catalog.items.get(item_id)
        if item is None or item.kind != kind:
            raise ApiError(404, 1021, f"Объект с типом '{kind}' и идентификатором '{item_id}' не найден")
        return item

    def entity_by_id(self, query, path, kind, item_id):
        if kind in FIELDS_KINDS:
            query.choice("fields", FIELDS)
        return self.emulator.renderer.item(self.find(kind, item_id), expand=query.expansions(listing=False))

    def bundle_components(self, query, path, bundle_id, component=None):
        """spec GET /entity/bundle/{id}/components (a BundleComponentList page) and .../components/{componentId}."""
        bundle = self.find(KIND_BUNDLE, bundle_id)
        renderer = self.emulator.renderer
        live = renderer.live_components(bundle)
        whole = "assortment" in query.expansions(listing=component is None)
        if component is not None:
            for part, quantity in live:
                if component_id(bundle.id, part) == component:
                    return renderer.component(bundle, part, quantity, whole)
            raise ApiError(404, 1021, f"Объект с типом 'bundlecomponent' и идентификатором '{component}' не найден")
        return self.page(path, query, "bundlecomponent", live,
                         lambda row: renderer.component(bundle, row[0], row[1], whole), metadata=False)

    def images(self, query, path, kind, item_id):
        item = self.find(kind, item_id)
        limit, _ = query.paging()
        # the spec has the images of a product only; the images of every kind take the same parameter here
        permanent = query.choice("fields", FIELDS) == "downloadPermanentHref" and limit <= EXPAND_LIMIT
        catalog, renderer = self.emulator.catalog, self.emulator.renderer
        rows = list(enumerate(catalog.image_ids(item)))
        return self.page(path, query, "image", rows,
                         lambda row: renderer.image_row(item, row[0], row[1], permanent), metadata=False)

    def download(self, query, path, image_id):
        if self.emulator.catalog.find_image(image_id) is None:
            raise ApiError(404, 1021, f"Объект с типом 'image' и идентификатором '{image_id}' не найден")
        return 302, None, {"Location": self.emulator.issue_download_link(image_id)}

    def security_token(self, query, path):
        token = secrets.token_hex(20)
        self.emulator.set_credentials(token=token)  # a new token revokes the earlier ones
        return 201, {"access_token": token}, {}

    # -- stock reports --------------------------------------------------------------------------

    def report_context(self) -> dict:
        base = self.emulator.base_url
        return {"context": {"employee": {"href": f"{base}/context/employee", "type": "employee", "mediaType": JSON}}}

    def report_lines(self, query: Query, by_store: bool) -> list:
        report = StockReport(self.emulator.catalog, query, by_store)
        return self.emulator.cached(report.cache_key, report.lines)

    def stock_all(self, query, path):
        """md/reports/_report_stock.md "Расширенный отчет об остатках": paged, limit <= 1000, cost 5 units."""
        lines = self.report_lines(query, by_store=False)
        catalog, renderer = self.emulator.catalog, self.emulator.renderer
        return self.page(path, query, "stock", lines,
                         lambda line: renderer.stock_all_row(line, catalog.parent_of(line.item)),
                         metadata=False, context=self.report_context())

    def stock_bystore(self, query, path):
        """md/reports/_report_stock.md "Остатки по складам": paged, limit <= 1000, cost 5 units."""
        lines = self.report_lines(query, by_store=True)
        return self.page(path, query, "stockbystore", lines, self.emulator.renderer.stock_bystore_row,
                         metadata=False, context=self.report_context())

    def stock_current(self, query, path):
        """Bare array of {assortmentId[, storeId], <stockType>} rows, one stock type per request."""
        return current_rows(self.emulator.catalog, query, by_store="/bystore/" in path)

    # -- webhooks -------------------------------------------------------------------------------

    def json_body(self):
        try:
            return json.loads(self.request_body or b"null")
        except ValueError:
            raise ApiError(400, 2001, "Ошибка формата: входящий запрос не соответствует формату JSON") from None

    def render_hook(self, kind: str, record: dict) -> dict:
        renderer = self.emulator.renderer
        return renderer.webhook(record) if kind == "webhook" else renderer.webhook_stock(record)

    def webhook_list(self, query, path, kind):
        rows = self.emulator.webhooks.records(kind)
        return self.page(path, query, kind, rows, lambda record: self.render_hook(kind, record))

    def webhook_create(self, query, path, kind):
        """One object creates one webhook; an array creates or (rows with meta) updates several (doc)."""
        body, hub = self.json_body(), self.emulator.webhooks
        if not isinstance(body, list):
            return self.render_hook(kind, hub.create(kind, body))
        results = []
        for row in body:
            href = ((row.get("meta") or {}).get("href") or "") if isinstance(row, dict) else ""
            record = hub.update(kind, href.rstrip("/").rsplit("/", 1)[-1], row) if href else hub.create(kind, row)
            results.append(self.render_hook(kind, record))
        return results

    def webhook_get(self, query, path, kind, hook_id):
        return self.render_hook(kind, self.emulator.webhooks.get(kind, hook_id))

    def webhook_update(self, query, path, kind, hook_id):
        return self.render_hook(kind, self.emulator.webhooks.update(kind, hook_id, self.json_body()))

    def webhook_delete(self, query, path, kind, hook_id):
        self.emulator.webhooks.delete(kind, hook_id)
        return 200, None, {}  # doc: "Response 200 ... Успешное удаление вебхука", no body


def _same(given: str | None, expected: str | None) -> bool:
    """A credential from a request against the emulator's own, in constant time as a real server compares."""
    return given is not None and expected is not None and hmac.compare_digest(given.encode(), expected.encode())
