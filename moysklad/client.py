"""HTTP client for the MoySklad JSON API 1.2: auth, gzip, paging, rate pacing and retries.

Retries wrap the send and the reading of the body: a request is retried on 5xx, timeouts, resets
and bodies that arrive cut off or do not decode or parse (an unfinished gzip stream, unterminated
JSON, a bare array without its closing bracket), with the same bounded exponential backoff in every
read path; it waits as told on 429 and never repeats other 4xx.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import math
import random
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

import msgspec
import requests
import urllib3
from isal import isal_zlib  # inflates 4-5× faster than zlib: a full sync unpacks ~0.5 GB of JSON at 100,000 rows
from requests.adapters import HTTPAdapter

from core.account_context import AccountThreadPool
from core.clock import MOSCOW
from core.http_failures import transport_reason
from core.settings import MoySkladSettings
from moysklad.errors import MoySkladError, RateLimited, TransportFailure, classify
from moysklad.transform import NotAListAnswer

log = logging.getLogger(__name__)

USER_AGENT = "skladbridge/0.1 (+catalog sync)"
WINDOW_SECONDS = 3.0
# MoySklad counts a request from when it arrives, which is before its answer comes back: we count its
# units until WINDOW_SECONDS after the answer (or the failure), plus this for the clocks' ticks.
WINDOW_MARGIN = 0.02
DEFAULT_UNIT_LIMIT = 45
# Units kept free for other users of the same account and for clock jitter between us and the server.
UNIT_RESERVE = 5
MAX_THROTTLED_IN_A_ROW = 12
DOWNLOAD_CHUNK = 1 << 16
ARRAY_PIECE = 1 << 20  # a bare-array answer is decoded this many bytes at a time

T = TypeVar("T")
# Turns a list page's JSON body into what iter_pages yields (it has the list's total as ``.size``, or is
# the page as a dict); raises msgspec.DecodeError for a body that is not whole JSON, NotAListAnswer for
# one that is no list page.
PageDecoder = Callable[[bytes], Any]


# The paged stock reports; their short forms (/report/stock/all/current, /bystore/current) cost 1 unit.
FIVE_UNIT_REPORTS = ("/report/stock/all", "/report/stock/bystore")


# What one request of a user weighs (DOMAIN.md: "a request made with login/password or a user's token weighs 2
# units from 2026-05-12, 3 from 2026-09-01, 4 from 2026-12-01"; only a published solution's token stays at 1). The
# token МойСклад → Настройки → Токены makes is a user's, so every request of this service weighs this much.
USER_REQUEST_UNITS = ((dt.date(2026, 12, 1), 4), (dt.date(2026, 9, 1), 3), (dt.date(2026, 5, 12), 2))


def request_cost(path: str, today: dt.date) -> int:
    """Units MoySklad charges on ``today`` (its date, Moscow): 5 for the paged stock reports, at least a user's
    request weight for anything."""
    weight = next((units for since, units in USER_REQUEST_UNITS if today >= since), 1)
    return max(5 if path.rstrip("/") in FIVE_UNIT_REPORTS else 1, weight)


class RateGate:
    """Keeps this process inside MoySklad's unit budget (45 units / 3 s) and honours its headers.

    A local sliding window stops us from overspending on our own: a request's units count from when
    it is sent until ``window`` after its answer arrived (MoySklad counted it before that), so the
    budget is used up to its end without a guessed margin for the network. The server's
    ``X-RateLimit-Remaining`` and 429 answers pause us when someone else shares the account.
    """

    def __init__(self, limit: int = DEFAULT_UNIT_LIMIT, window: float = WINDOW_SECONDS + WINDOW_MARGIN,
                 clock=time.monotonic, sleep=time.sleep):
        self.limit = limit
        self.window = window
        self.clock = clock
        self.sleep = sleep
        self.spent: list[list] = []  # [answered at (inf while on its way), units] per request
        self.paused_until = 0.0
        self.lock = threading.Lock()

    def acquire(self, cost: int) -> list:
        """Block until ``cost`` units may be spent; the request's entry, for :meth:`answered`."""
        while True:
            with self.lock:
                now = self.clock()
                self.spent = [entry for entry in self.spent if entry[0] + self.window > now]
                used = sum(units for _, units in self.spent)
                budget = max(cost, self.limit - UNIT_RESERVE)
                if now >= self.paused_until and used + cost <= budget:
                    entry = [math.inf, cost]
                    self.spent.append(entry)
                    return entry
                frees = min((answered for answered, _ in self.spent), default=now) + self.window
                delay = self.paused_until - now if now < self.paused_until else frees - now
            self.sleep(min(max(delay, 0.005), self.window))

    def answered(self, entry: list) -> None:
        """The request's answer (or its failure) came: its units count for ``window`` from now on."""
        with self.lock:
            entry[0] = min(entry[0], self.clock())

    def observe(self, headers) -> None:
        """Adopt the server's view after each answer."""
        limit = _int(headers.get("X-RateLimit-Limit"))
        remaining = _int(headers.get("X-RateLimit-Remaining"))
        with self.lock:
            if limit:
                self.limit = limit
            if remaining is not None and remaining < UNIT_RESERVE:
                reset = _int(headers.get("X-Lognex-Reset"))
                pause = (reset / 1000.0) if reset is not None else self.window
                self.paused_until = max(self.paused_until, self.clock() + min(pause, self.window))

    def pause(self, seconds: float) -> None:
        """The server said 429: nobody sends until it said we may."""
        with self.lock:
            self.paused_until = max(self.paused_until, self.clock() + seconds)


class MoySkladClient:
    """One authenticated, paced, keep-alive connection pool to one MoySklad account."""

    def __init__(self, settings: MoySkladSettings, base_url: str | None = None):
        self.settings = settings
        self.base_url = (base_url or settings.base_url).rstrip("/")
        self.base_path = urlsplit(self.base_url).path
        self.gate = RateGate()
        self.in_flight = threading.BoundedSemaphore(settings.max_in_flight)
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=settings.max_in_flight, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update({
            "Accept": "application/json;charset=utf-8",
            "Accept-Encoding": "gzip",
            "User-Agent": USER_AGENT,
        })
        if settings.token:
            self.session.headers["Authorization"] = f"Bearer {settings.token}"
        else:
            self.session.auth = (settings.login, settings.password)
        self.auth_kind = settings.auth_kind
        self.stats_lock = threading.Lock()
        self.requests = 0
        self.units = 0  # of MoySklad's budget, what the requests sent cost (request_cost each, as paced)
        self.throttled = 0
        self.retries = 0
        self.server_date = None  # the Date header of the latest answer: MoySklad's clock, not ours
        # Download links lead to another host: a separate session that never holds our credentials.
        self.links = requests.Session()
        link_adapter = HTTPAdapter(pool_maxsize=settings.max_in_flight, max_retries=0)
        self.links.mount("http://", link_adapter)
        self.links.mount("https://", link_adapter)
        self.links.headers["User-Agent"] = USER_AGENT

    def close(self) -> None:
        self.session.close()
        self.links.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- single requests --------------------------------------------------------------------

    def get(self, path: str, params: dict | None = None, headers: dict | None = None):
        """GET one JSON document (object or array); a body that does not parse is fetched again."""
        return self._send(path, params, headers, receive=lambda response: _decode(response.content, path))

    def get_page(self, path: str, params: dict, headers: dict | None, decode: PageDecoder | None = None):
        """GET one page of a list, checked to have the list shape, as ``decode`` makes it (default: a dict).

        The body is unpacked, parsed and checked inside the retry loop, in the calling thread: a page
        cut off on the way, or one that does not parse, is fetched again like a reset.
        """
        decode = decode or list_page
        return self._send(path, params, headers, receive=lambda response: _read_page(response, path, decode))

    def _send(self, path: str, params: dict | None, headers: dict | None,
              receive: Callable[[requests.Response], T] | None = None, redirect: bool = False):
        """Send with pacing and retries; return what ``receive`` made of a 2xx answer.

        ``receive`` reads the body inside the retry loop, so a body cut off on the way or one that
        does not decode or parse (it raises :class:`TransportFailure`) is retried like a reset.
        Without ``receive`` the answer itself is returned, read whole (a 3xx one too when ``redirect``).
        """
        url = self.base_url + path if path.startswith("/") else path
        api_path = _api_path(url, self.base_path)
        cost = request_cost(api_path, dt.datetime.now(MOSCOW).date())
        attempt = 0
        throttled_in_a_row = 0
        while True:
            spent = self.gate.acquire(cost)
            try:
                with self.in_flight:
                    self._count("requests")
                    self._count("units", cost)
                    try:
                        response = self.session.get(
                            url, params=params, headers=headers, stream=True,
                            timeout=(self.settings.connect_timeout, self.settings.read_timeout), allow_redirects=False,
                        )
                    finally:
                        self.gate.answered(spent)
                    try:
                        self.gate.observe(response.headers)
                        if response.status_code < 300 and receive is not None:
                            received = receive(response)
                        else:
                            received = response
                            _ = response.content
                    except BaseException:
                        response.close()  # a body read halfway: the connection cannot be reused
                        raise
                if response.status_code < 300 or (redirect and response.is_redirect):
                    self._note_date(response)
                    return received
                error = classify(response.status_code, response.content, response.headers, api_path, url)
            except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
                error = TransportFailure(f"no complete answer from MoySklad for {api_path}: {transport_reason(exc)}", url=url)
            except TransportFailure as exc:
                error = exc
            if isinstance(error, RateLimited):
                throttled_in_a_row += 1
                self._count("throttled")
                if throttled_in_a_row > MAX_THROTTLED_IN_A_ROW:
                    raise MoySkladError(
                        f"MoySklad kept throttling {api_path} ({throttled_in_a_row} times in a row): another "
                        f"program is probably using up this account's API budget; stopped to avoid an API ban"
                    ) from error
                wait = error.retry_after + random.uniform(0, 0.05)
                log.warning("throttled by MoySklad on %s, waiting %.2fs as told", api_path, wait)
                self.gate.pause(wait)
                continue
            if not error.retriable or attempt >= self.settings.max_retries:
                if error.retriable:
                    error.args = (f"{error.args[0]} (gave up after {attempt + 1} attempts)",)
                raise error
            attempt += 1
            self._back_off(error, attempt)

    # --- lists ------------------------------------------------------------------------------

    def iter_pages(self, path: str, params: dict | None = None, headers: dict | None = None,
                   limit: int | None = None, decode: PageDecoder | None = None) -> Iterator:
        """Yield every page of a list in order, fetching up to ``max_in_flight`` pages ahead.

        The first page tells the size; the remaining offsets are then requested in parallel and
        handed out in order. Each page is unpacked and decoded (``decode``, default: the JSON as a
        dict) in the thread that fetched it, so the caller's thread (the one writing SQLite) only
        gets decoded pages; a decoder that keeps only what the store needs keeps the pages waiting
        small. ``limit`` overrides the page size (``expand`` works only up to 100).
        """
        limit = min(limit or self.settings.page_size, self.settings.page_size)
        base = dict(params or {}, limit=limit)
        first = self.get_page(path, dict(base, offset=0), headers, decode)
        yield first
        size = _page_size(first)
        if size <= limit:
            return
        offsets = iter(range(limit, size, limit))
        depth = self.settings.max_in_flight
        with AccountThreadPool(max_workers=depth, thread_name_prefix="moysklad-page") as pool:
            pending = deque()

            def submit(offset):
                pending.append(pool.submit(self.get_page, path, dict(base, offset=offset), headers, decode))

            for offset in itertools.islice(offsets, depth):
                submit(offset)
            try:
                while pending:
                    page = pending.popleft().result()
                    next_offset = next(offsets, None)
                    if next_offset is not None:
                        submit(next_offset)
                    yield page
                    del page
            finally:
                for future in pending:
                    future.cancel()

    def iter_rows(self, path: str, params: dict | None = None, headers: dict | None = None) -> Iterator[dict]:
        for page in self.iter_pages(path, params, headers):
            yield from page["rows"]

    def iter_array(self, path: str, params: dict | None = None, item_type: Any = Any) -> Iterator:
        """Yield the objects of a bare JSON array answer (the current-stock reports) one by one,
        decoded as ``item_type`` (a msgspec type; default: dicts).

        Those answers are not paged and can hold hundreds of thousands of rows, so the body is
        first downloaded whole to a temporary file, unpacked and checked to be complete (the gzip
        stream ended, the array closed), retrying as needed, then decoded a megabyte at a time:
        memory stays flat whatever the catalog size, and nothing is yielded from a cut-off answer.
        """
        for piece in self.iter_array_pieces(path, params, item_type):
            yield from piece

    def iter_array_pieces(self, path: str, params: dict | None = None, item_type: Any = Any) -> Iterator[list]:
        """:meth:`iter_array` a piece at a time: lists of the objects of about a megabyte of the answer."""
        spool = self._send(path, params, None, receive=lambda response: _spool_array(response, path))
        with spool:
            yield from _parse_array(spool, path, msgspec.json.Decoder(list[item_type]))

    # --- files ------------------------------------------------------------------------------

    def download_location(self, path: str) -> str:
        """The short-lived file link that ``/download/<id>`` redirects to, asked with our credentials."""
        response = self._send(path, None, None, redirect=True)
        location = response.headers.get("Location")
        if not response.is_redirect or not location:
            raise TransportFailure(f"MoySklad answered {path} without a file link")
        return urljoin(response.url, location)

    def download(self, path: str, consume: Callable[[Iterator[bytes]], T]) -> T:
        """Stream a ``/download/<id>`` file into ``consume`` and return what it returns.

        The file link is fetched without credentials (it is on another host) and lives about a
        minute, so each retry asks MoySklad for a fresh one and calls ``consume`` from the start.
        """
        timeout = (self.settings.connect_timeout, self.settings.read_timeout)
        for attempt in itertools.count():
            link = self.download_location(path)
            try:
                with self.links.get(link, stream=True, timeout=timeout) as response:
                    if response.status_code != 200:
                        raise TransportFailure(f"the file link of {path} answered HTTP {response.status_code}")
                    return consume(response.iter_content(chunk_size=DOWNLOAD_CHUNK))
            except TransportFailure as exc:
                reason = str(exc)
            except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
                reason = f"the file of {path} did not arrive: {transport_reason(exc)}"
            if attempt >= self.settings.max_retries:
                raise TransportFailure(f"{reason} (gave up after {attempt + 1} attempts)")
            self._back_off(reason, attempt + 1)

    # --- bookkeeping ------------------------------------------------------------------------

    def _back_off(self, reason, retry: int) -> None:
        """Before retry number ``retry``: a jittered exponential pause, counted and logged."""
        self._count("retries")
        delay = min(self.settings.retry_max_delay, self.settings.retry_base_delay * 2 ** (retry - 1))
        delay *= random.uniform(0.5, 1.0)
        log.warning("%s; retry %d/%d in %.1fs", reason, retry, self.settings.max_retries, delay)
        time.sleep(delay)

    def _count(self, name: str, n: int = 1) -> None:
        with self.stats_lock:
            setattr(self, name, getattr(self, name) + n)

    def _note_date(self, response: requests.Response) -> None:
        value = response.headers.get("Date")
        if value:
            try:
                self.server_date = parsedate_to_datetime(value)
            except (TypeError, ValueError):
                pass


_JSON = msgspec.json.Decoder()


def _decode(body: bytes, path: str):
    try:
        return _JSON.decode(body)
    except msgspec.DecodeError as exc:
        raise TransportFailure(f"MoySklad's answer for {path} is not whole JSON (cut off on the way?): {exc}") from exc


def list_page(body: bytes) -> dict:
    """A list page as MoySklad sends it (``meta``, ``rows``, ...), as a dict."""
    data = _JSON.decode(body)
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list) or not isinstance(data.get("meta"), dict):
        raise NotAListAnswer("not a list answer (no meta/rows)")
    return data


def _page_size(page) -> int:
    size = page["meta"].get("size") if isinstance(page, dict) else page.size
    return size if isinstance(size, int) and not isinstance(size, bool) else 0


def _read_page(response: requests.Response, path: str, decode: PageDecoder):
    """A list page's body read whole, unpacked and decoded; :class:`TransportFailure` (retried) when it
    arrived cut off, does not parse or is no list page."""
    wire = response.raw.read(decode_content=False)
    response.raw.release_conn()  # read to the end: the connection stays alive
    body = _gunzip_whole(wire, path) if "gzip" in response.headers.get("Content-Encoding", "") else wire
    del wire
    try:
        return decode(body)
    except msgspec.DecodeError as exc:
        raise TransportFailure(f"MoySklad's answer for {path} is not whole JSON (cut off on the way?): {exc}") from exc
    except NotAListAnswer as exc:
        raise TransportFailure(f"MoySklad answered {path} without meta/rows: not a list answer") from exc


def _gunzip(chunks: Iterable[bytes], path: str) -> Iterator[bytes]:
    """Unpack a gzip stream chunk by chunk; :class:`TransportFailure` when it is corrupt or ends early."""
    inflater = isal_zlib.decompressobj(16 + isal_zlib.MAX_WBITS)
    try:
        for chunk in chunks:
            while chunk:  # in pieces of at most DOWNLOAD_CHUNK: a page unpacks to megabytes
                yield inflater.decompress(chunk, DOWNLOAD_CHUNK)
                chunk = inflater.unconsumed_tail
        yield inflater.flush()
    except isal_zlib.error as exc:
        raise TransportFailure(f"MoySklad sent a corrupt compressed answer for {path}: {exc}") from exc
    if not inflater.eof:
        raise TransportFailure(f"MoySklad's answer for {path} was cut off (the gzip stream ends early)")


def _gunzip_whole(wire: bytes, path: str) -> bytes:
    """A whole gzip stream unpacked; :class:`TransportFailure` when it is corrupt or ends early."""
    inflater = isal_zlib.decompressobj(16 + isal_zlib.MAX_WBITS)
    try:
        body = inflater.decompress(wire) + inflater.flush()
    except isal_zlib.error as exc:
        raise TransportFailure(f"MoySklad sent a corrupt compressed answer for {path}: {exc}") from exc
    if not inflater.eof:
        raise TransportFailure(f"MoySklad's answer for {path} was cut off (the gzip stream ends early)")
    return body


def _spool_array(response: requests.Response, path: str):
    """The unpacked body of a bare-array answer in a temporary file, checked to be complete."""
    spool = tempfile.TemporaryFile()
    try:
        chunks = response.raw.stream(DOWNLOAD_CHUNK, decode_content=False)
        for part in _gunzip(chunks, path) if "gzip" in response.headers.get("Content-Encoding", "") else chunks:
            spool.write(part)
        response.raw.release_conn()
        size = spool.tell()
        spool.seek(max(0, size - 64))
        if not spool.read().rstrip().endswith(b"]"):
            raise TransportFailure(f"the JSON array from {path} ended early (truncated answer)")
        spool.seek(0)
        return spool
    except BaseException:
        spool.close()
        raise


def _parse_array(stream, path: str, decoder: msgspec.json.Decoder) -> Iterator[list]:
    """Decode ``[ {...}, {...} ]`` from a binary file a piece at a time (a list per piece).

    Each piece ends at a ``}`` and is decoded as ``[`` piece ``]``: that parses only when the cut falls
    between two elements (a ``}`` inside a text or a nested object leaves the brackets unbalanced), so
    a piece that does not parse is grown to the next ``}`` before the array is called malformed.
    """
    buffer = stream.read(ARRAY_PIECE).lstrip()
    if not buffer.startswith(b"["):
        raise TransportFailure(f"MoySklad answered {path} with something other than a JSON array")
    buffer = buffer[1:]
    done = False
    while not done:
        chunk = stream.read(ARRAY_PIECE)
        buffer += chunk
        if not chunk:
            done = True
            end = buffer.rstrip()
            if not end.endswith(b"]"):
                raise TransportFailure(f"the JSON array from {path} ended early (truncated answer)")
            piece, buffer = end[:-1], b""
        else:
            cut = buffer.rfind(b"}")
            if cut < 0:
                continue
            piece, buffer = buffer[:cut + 1], buffer[cut + 1:]
        piece = piece.strip(b" \t\r\n,")
        if not piece:
            continue
        try:
            objects = decoder.decode(b"[" + piece + b"]")
        except msgspec.DecodeError as exc:
            if done:
                raise TransportFailure(f"the JSON array from {path} is malformed: {exc}") from None
            buffer = piece + buffer  # cut inside an element: decode it with the next piece
            continue
        yield objects


def _api_path(url: str, base_path: str) -> str:
    path = urlsplit(url).path
    return path[len(base_path):] if path.startswith(base_path) else path


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
