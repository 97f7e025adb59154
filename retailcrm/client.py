"""HTTP client for the retailCRM API v5: key header, pacing per key, retries, one upload batch per call.

Retries wrap the send only: 503/429 (throttled), other 5xx, timeouts, resets and unreadable
bodies are retried with jittered exponential back-off; other 4xx never are. Both uploads set
absolute values (stock, prices), so sending one again after a lost answer is harmless.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import threading
import time
from dataclasses import dataclass, field

import requests
import urllib3
from requests.adapters import HTTPAdapter

from core.http_failures import transport_reason
from retailcrm.errors import RATE_WINDOW, RateLimited, RetailCrmError, TransportFailure, classify

log = logging.getLogger(__name__)

API_PREFIX = "/api/v5"
# The official clients ask /api/credentials, outside the versioned prefix (api-client-go client.go
# APICredentials, api-client-php tests/.../ApiTest testCredentials).
CREDENTIALS_PATH = "/api/credentials"
MAX_BATCH = 250  # api-client-dotnet Versions/V3/Stores.cs and V4/Stores.cs refuse more
USER_AGENT = "skladbridge/0.1 (+stock and price push)"
# A request counts from when its answer arrived, by which time the server has counted it: the
# server never sees more than the limit in any of its windows, whatever the latency. The margin
# covers timer granularity only.
WINDOW_MARGIN = 0.01
IN_FLIGHT = math.inf  # a request sent and not answered yet holds its place in the window


@dataclass(frozen=True)
class UploadResult:
    """What retailCRM did with one batch: how many offers it updated and which it does not know."""

    processed: int
    not_found: list[dict] = field(default_factory=list)


class RequestWindow:
    """At most ``limit`` requests in any window of ``window`` seconds, for every client of one key.

    Each request holds a place from when it is sent until ``window`` seconds after its answer came.
    """

    def __init__(self, limit: int, window: float = RATE_WINDOW + WINDOW_MARGIN, clock=time.monotonic,
                 sleep=time.sleep):
        self.limit = limit
        self.window = window
        self.clock = clock
        self.sleep = sleep
        self.places: list[list[float]] = []  # [when the answer came], IN_FLIGHT until then
        self.paused_until = 0.0
        self.lock = threading.Lock()

    def acquire(self) -> list[float]:
        """Block until one more request fits; return its place, for :meth:`answered`."""
        while True:
            with self.lock:
                now = self.clock()
                self.places = [place for place in self.places if place[0] + self.window > now]
                if now >= self.paused_until and len(self.places) < self.limit:
                    place = [IN_FLIGHT]
                    self.places.append(place)
                    return place
                if now < self.paused_until:
                    delay = self.paused_until - now
                else:  # the first place to free up; an answer still awaited is checked for again shortly
                    delay = min(place[0] + self.window - now for place in self.places)
            self.sleep(min(max(delay, 0.005), 0.05))

    def answered(self, place: list[float]) -> None:
        """The request of ``place`` got its answer (or failed): its place frees up ``window`` seconds from now."""
        with self.lock:
            place[0] = self.clock()

    def pause(self, seconds: float) -> None:
        """retailCRM said the key is over its limit: nobody using the key sends until then."""
        with self.lock:
            self.paused_until = max(self.paused_until, self.clock() + seconds)


_windows: dict[tuple[str, str], RequestWindow] = {}
_windows_lock = threading.Lock()


def shared_window(url: str, api_key: str, limit: int) -> RequestWindow:
    """The one window of an (account, key) pair in this process; the key is held only as a digest."""
    ident = (url, hashlib.sha256(api_key.encode("utf-8")).hexdigest())
    with _windows_lock:
        window = _windows.get(ident)
        if window is None:
            window = _windows[ident] = RequestWindow(limit)
        window.limit = min(window.limit, limit)
        return window


def backoff_delay(retry: int, base: float, cap: float, rng=random) -> float:
    """Seconds before retry number ``retry``: exponential, capped, with jitter so clients spread out."""
    return min(cap, base * 2 ** (retry - 1)) * rng.uniform(0.5, 1.0)


class RetailCrmClient:
    """One paced, keep-alive connection pool to one retailCRM account, for one API key."""

    def __init__(self, url: str, api_key: str, *, rate_per_second: int = 10, max_retries: int = 5,
                 retry_base_delay: float = 1.0, retry_max_delay: float = 30.0, connect_timeout: float = 10,
                 read_timeout: float = 60):
        self.url = url.rstrip("/")
        self.base_url = self.url + API_PREFIX
        self.max_retries = max_retries
        self.retry_base_delay = retry_base_delay
        self.retry_max_delay = retry_max_delay
        self.timeout = (connect_timeout, read_timeout)
        self.window = shared_window(self.url, api_key or "", rate_per_second)
        self.session = requests.Session()
        adapter = HTTPAdapter(max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update({"Accept": "application/json", "Accept-Encoding": "gzip",
                                     "User-Agent": USER_AGENT, "X-API-Key": api_key or ""})
        self.stats_lock = threading.Lock()
        self.requests = 0
        self.throttled = 0
        self.retries = 0

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> RetailCrmClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- reference data ---------------------------------------------------------------------

    def credentials(self) -> dict:
        """Which methods (``credentials``) and shops (``siteAccess``, ``sitesAvailable``) the key may use."""
        data = self._send("GET", CREDENTIALS_PATH)
        return {name: value for name, value in data.items() if name != "success"}

    def sites(self) -> dict[str, dict]:
        """The account's shops by code (retailCRM sends them as an object keyed by code; not paged)."""
        return self._reference("/reference/sites", "sites")

    def stores(self) -> dict[str, dict]:
        """The account's warehouses by code (an unpaged list in the answer)."""
        return self._reference("/reference/stores", "stores")

    def price_types(self) -> dict[str, dict]:
        """The account's price types by code (an unpaged list in the answer)."""
        return self._reference("/reference/price-types", "priceTypes")

    def _reference(self, path: str, name: str) -> dict[str, dict]:
        data = self._send("GET", API_PREFIX + path)
        if name not in data:
            raise TransportFailure(f"retailCRM answered {API_PREFIX}{path} without '{name}'", path=API_PREFIX + path)
        return by_code(data[name])

    # --- uploads ----------------------------------------------------------------------------

    def upload_inventories(self, offers: list[dict], site: str) -> UploadResult:
        """Set ``available``/``purchasePrice`` per warehouse for one batch of a shop's offers."""
        return self._upload("/store/inventories/upload", "offers", offers, site=site)

    def upload_prices(self, prices: list[dict]) -> UploadResult:
        """Set prices per price type for one batch of offers (each item names its own ``site``)."""
        return self._upload("/store/prices/upload", "prices", prices)

    def _upload(self, path: str, name: str, items: list[dict], **form) -> UploadResult:
        if len(items) > MAX_BATCH:
            raise ValueError(f"{len(items)} {name} in one request to {path}: retailCRM takes at most "
                             f"{MAX_BATCH}, split them into batches")
        if not items:
            return UploadResult(0, [])
        body = {name: json.dumps(items, ensure_ascii=False, separators=(",", ":")), **form}
        data = self._send("POST", API_PREFIX + path, form=body)
        return UploadResult(int(data.get("processedOffersCount") or 0), list(data.get("notFoundOffers") or []))

    # --- sending ----------------------------------------------------------------------------

    def _send(self, method: str, path: str, form: dict | None = None) -> dict:
        """Send with pacing and retries; return the JSON object of a 2xx answer that does not say it failed."""
        url = self.url + path
        attempt = 0
        while True:
            place = self.window.acquire()
            self._count("requests")
            try:
                try:
                    response = self.session.request(method, url, data=form, timeout=self.timeout, allow_redirects=False)
                finally:
                    self.window.answered(place)
                if response.status_code < 300:
                    data = _decode(response.content, path)
                    if data.get("success") is not False:  # an error is told by its body (RETAILCRM.md:23)
                        return data
                error = classify(response.status_code, response.content, response.headers, path, url)
            except TransportFailure as exc:
                error = exc
            except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
                error = TransportFailure(f"no complete answer from retailCRM for {path}: {transport_reason(exc)}", path=path)
            if isinstance(error, RateLimited):
                self._count("throttled")
            if not error.retriable or attempt >= self.max_retries:
                if error.retriable:
                    error.args = (f"{error.args[0]} (gave up after {attempt + 1} attempts)",)
                raise error
            attempt += 1
            self._back_off(error, attempt)

    def _back_off(self, error: RetailCrmError, retry: int) -> None:
        """Before retry number ``retry``: a jittered pause, counted and logged; a throttle pauses the key."""
        self._count("retries")
        delay = backoff_delay(retry, self.retry_base_delay, self.retry_max_delay)
        if isinstance(error, RateLimited):
            delay = max(delay, error.retry_after)
            self.window.pause(delay)
        log.warning("%s; retry %d/%d in %.1fs", error, retry, self.max_retries, delay)
        time.sleep(delay)

    def _count(self, name: str) -> None:
        with self.stats_lock:
            setattr(self, name, getattr(self, name) + 1)


def by_code(items) -> dict[str, dict]:
    """A reference list keyed by code, whether it came as an object keyed by code or as an array."""
    rows = items.values() if isinstance(items, dict) else items or []
    return {row["code"]: row for row in rows}


def _decode(body: bytes, path: str) -> dict:
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise TransportFailure(f"retailCRM sent an unreadable answer for {path}: {exc}", path=path) from exc
    if not isinstance(data, dict):
        raise TransportFailure(f"retailCRM answered {path} with something other than a JSON object", path=path)
    return data
