"""HTTP server that answers like the retailCRM API v5 methods skladbridge uses, with fault switches.

Sources, cited beside each behaviour: RETAILCRM.md (../shared/docs/RETAILCRM.md, by line) and the
official clients: retailcrm/api-client-go (error.go, rate.go, client.go, v5/response.go,
client_test.go), retailcrm/api-client-php (src/Factory/ApiExceptionFactory.php,
src/ResourceGroup/Store.php, tests .../ApiTest.php), retailcrm/api-client-dotnet
(Retailcrm/Versions/V3|V4/Stores.cs). Texts no source shows are marked «assumed».

    with RetailCrmEmulator(api_key="rcrm-key", sites=("shop",)) as crm:
        crm.load_icml(Path("feed.xml"), "shop")      # what retailCRM learns from the feed
        RetailCrmClient(crm.base_url, "rcrm-key").upload_inventories([...], site="shop")
        crm.stock("shop", "115")                    # {"main": {"available": 5, "purchasePrice": 100}}

Control endpoints (no key): GET /_emulator/stats, GET /_emulator/state, GET|POST /_emulator/faults,
POST /_emulator/reset-stats, POST /_emulator/icml?site=S (body: an ICML file).
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from lxml import etree

from .loopback import LoopbackServer, QuietHandler, abort_connection, common_control
from .server import PROXY_503, Faults

API_PREFIX = "/api/v5"
MAX_BATCH = 250  # RETAILCRM.md:38, :47; api-client-dotnet Versions/V3/Stores.cs, V4/Stores.cs
RATE_LIMIT = 10  # requests per key per second: RETAILCRM.md:26; api-client-go rate.go (RPS = 10)
RATE_WINDOW = 1.0
RATE_LIMITED = {"success": False, "errorMsg": "Rate limit exceeded"}  # RETAILCRM.md:27
# errorMsg texts: RETAILCRM.md:24-25; api-client-go error.go; api-client-php ApiExceptionFactory.php
MISSING_KEY = '"apiKey" is missing.'
WRONG_KEY = 'Wrong "apiKey" value.'
ACCESS_DENIED = "Access denied."
ENTITY_FORMAT = "Errors in the entity format"
METHOD_NOT_FOUND = "Method not found"
CREDENTIALS_PATHS = ("/api/credentials", API_PREFIX + "/credentials")  # api-client-go client.go; RETAILCRM.md:29
INVENTORIES = API_PREFIX + "/store/inventories/upload"
PRICES = API_PREFIX + "/store/prices/upload"
REFERENCES = {API_PREFIX + "/reference/sites": "sites", API_PREFIX + "/reference/stores": "stores",
              API_PREFIX + "/reference/price-types": "priceTypes"}
API_METHODS = (*CREDENTIALS_PATHS, *REFERENCES, INVENTORIES, PRICES)
OFFER_KEYS = ("id", "externalId", "xmlId")  # RETAILCRM.md:18-19, :36, :45


class ApiError(Exception):
    """An error answered as retailCRM's ``{"success": false, "errorMsg", "errors"}`` body (RETAILCRM.md:23)."""

    def __init__(self, status: int, message: str, errors: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.errors = status, message, errors or {}

    def body(self) -> dict:
        body = {"success": False, "errorMsg": self.message}
        if self.errors:
            body["errors"] = self.errors
        return body


class RetailCrmFaults(Faults):
    """The MoySklad emulator's seeded switches, plus ``outage`` (every request 503) and ``revoked``
    (every key refused as a wrong one, as after it is deleted in retailCRM)."""

    FIELDS = ("latency_ms", "error_rate", "reset_rate", "outage", "revoked", "seed")

    def __init__(self):
        super().__init__()
        self.outage = False
        self.revoked = False


@dataclass(frozen=True)
class KeyGrant:
    """What one key may do: ``None`` means everything (a key with full access)."""

    sites: frozenset | None = None
    methods: frozenset | None = None


@dataclass
class Offer:
    """An offer retailCRM knows from a loaded feed: its own number and the feed's identifiers."""

    id: int
    external_id: str
    xml_id: str | None


class RateWindow:
    """Requests admitted per key in the last second; the 11th inside one second is refused."""

    def __init__(self, limit: int = RATE_LIMIT, window: float = RATE_WINDOW):
        self.limit, self.window = limit, window
        self.admitted: dict[str, deque] = {}
        self.lock = threading.Lock()

    def admit(self, key: str) -> bool:
        now = time.monotonic()
        with self.lock:
            times = self.admitted.setdefault(key, deque())
            while times and times[0] <= now - self.window:
                times.popleft()
            if len(times) >= self.limit:
                return False
            times.append(now)
            return True


def read_icml_offers(source: Path | str | bytes):
    """(offer@id, <xmlId>) of each offer in an ICML file, streamed; no entities, no DTD, no network."""
    stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else str(source)
    for _, element in etree.iterparse(stream, events=("end",), tag="offer", resolve_entities=False,
                                      no_network=True, load_dtd=False, huge_tree=True):
        yield element.get("id"), element.findtext("xmlId")
        element.clear()
        while element.getprevious() is not None:
            del element.getparent()[0]


class RetailCrmEmulator(LoopbackServer):
    """A retailCRM account on a real loopback socket: shops, warehouses, price types, offers, keys."""

    thread_name = "retailcrm-emulator"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, api_key: str = "rcrm-key",
                 sites: tuple = ("shop",), stores: tuple = ("main", "spb"), price_types: tuple = ("base", "wholesale")):
        self.sites, self.store_codes, self.price_type_codes = tuple(sites), tuple(stores), tuple(price_types)
        self.keys: dict[str, KeyGrant] = {api_key: KeyGrant()}
        self.api_key = api_key
        self.faults = RetailCrmFaults()
        self.rate_window = RateWindow()
        self._lock = threading.Lock()
        self.offers: dict[str, dict[str, Offer]] = {site: {} for site in self.sites}
        self._by_xml_id: dict[str, dict[str, str]] = {site: {} for site in self.sites}
        self._by_id: dict[int, tuple[str, str]] = {}
        self._stock: dict[tuple[str, str], dict] = {}
        self._prices: dict[tuple[str, str], dict] = {}
        self.reset_stats()
        self.httpd = _Server((host, port), _Handler)
        self.httpd.emulator = self
        bound_host, bound_port = self.httpd.server_address[:2]
        self.base_url = f"http://{bound_host}:{bound_port}"  # the account address a client is given
        self.api_url = self.base_url + API_PREFIX

    # -- set-up -------------------------------------------------------------------------------

    def add_key(self, key: str, sites=None, methods=None) -> None:
        """Another key, limited to some shops and/or API paths, as an admin can set one up."""
        self.keys[key] = KeyGrant(frozenset(sites) if sites is not None else None,
                                  frozenset(methods) if methods is not None else None)

    def load_icml(self, source: Path | str | bytes, site: str) -> int:
        """Learn a shop's offers from its feed, as retailCRM does when it downloads it; returns the count.

        offer@id becomes externalId and <xmlId> the xmlId (RETAILCRM.md:18-19). Offers missing from
        a later feed stay known, with their stock and prices.
        """
        if site not in self.offers:
            raise ValueError(f"unknown site {site!r}; the emulator has {list(self.sites)}")
        count = 0
        for external_id, xml_id in read_icml_offers(source):
            with self._lock:
                known = self.offers[site].get(external_id)
                offer = Offer(known.id if known else len(self._by_id) + 1, external_id, xml_id)
                self.offers[site][external_id] = offer
                self._by_id[offer.id] = (site, external_id)
                if xml_id:
                    self._by_xml_id[site][xml_id] = external_id
            count += 1
        return count

    # -- what was uploaded ----------------------------------------------------------------------

    def stock(self, site: str, external_id: str) -> dict:
        """{store code: {"available", "purchasePrice"}} as last uploaded for one offer."""
        with self._lock:
            return {code: dict(values) for code, values in self._stock.get((site, external_id), {}).items()}

    def prices(self, site: str, external_id: str) -> dict:
        """{price type code: price} as last uploaded for one offer."""
        with self._lock:
            return dict(self._prices.get((site, external_id), {}))

    def state(self) -> dict:
        """Everything uploaded so far, per shop and offer (the /_emulator/state answer)."""
        with self._lock:
            state = {site: {external_id: {"id": offer.id, "xmlId": offer.xml_id,
                                          "stock": self._stock.get((site, external_id), {}),
                                          "prices": self._prices.get((site, external_id), {})}
                            for external_id, offer in offers.items()}
                     for site, offers in self.offers.items()}
            return json.loads(json.dumps(state))  # a copy: uploads go on while the caller reads it

    # -- stats --------------------------------------------------------------------------------

    def reset_stats(self) -> None:
        with self._lock:
            self.stats = {"requests": 0, "by_path": {}, "status": {}, "rate_limited": 0, "max_upload_items": 0}

    def stats_snapshot(self) -> dict:
        with self._lock:
            return json.loads(json.dumps(self.stats))

    def _note(self, path: str, status: int) -> None:
        with self._lock:
            self.stats["requests"] += 1
            self.stats["by_path"][path] = self.stats["by_path"].get(path, 0) + 1
            self.stats["status"][str(status)] = self.stats["status"].get(str(status), 0) + 1

    def _note_batch(self, size: int) -> None:
        with self._lock:
            self.stats["max_upload_items"] = max(self.stats["max_upload_items"], size)

    def _note_rate_limited(self) -> None:
        with self._lock:
            self.stats["rate_limited"] += 1

    # -- the API --------------------------------------------------------------------------------

    def answer(self, method: str, path: str, params: dict, key: str | None) -> tuple[int, dict]:
        """(status, body) of one API request that got past the faults and the rate limit."""
        try:
            grant = self._grant(key)
            handler, allowed = self._route(path)
            if method != allowed:
                raise ApiError(405, "Method not allowed")  # assumed text
            if grant.methods is not None and path not in grant.methods and path not in CREDENTIALS_PATHS:
                raise ApiError(403, ACCESS_DENIED)  # a key limited to some methods: RETAILCRM.md:24, :29
            return 200, handler(path, params, grant)
        except ApiError as error:
            return error.status, error.body()

    def _grant(self, key: str | None) -> KeyGrant:
        if not key:
            raise ApiError(403, MISSING_KEY)  # text: api-client-go error.go; status assumed like a wrong key
        grant = self.keys.get(key)
        if grant is None or self.faults.revoked:
            raise ApiError(403, WRONG_KEY)  # 403 + this text: api-client-go client_test.go TestGetRequest (live)
        return grant

    def _route(self, path: str):
        if path in CREDENTIALS_PATHS:
            return self._credentials, "GET"
        if path in REFERENCES:
            return self._reference, "GET"
        if path == INVENTORIES:
            return self._upload_inventories, "POST"
        if path == PRICES:
            return self._upload_prices, "POST"
        # a path that is no API method: 404 "Method not found" (api-client-go client_test.go TestGetRequest and
        # TestPostRequest, /api/v5/fake-method); "Not found" (RETAILCRM.md:25) is an entity's answer, not a path's
        raise ApiError(404, METHOD_NOT_FOUND)

    def _credentials(self, path: str, params: dict, grant: KeyGrant) -> dict:
        """Methods and shops of the key (api-client-go CredentialResponse; PHP ApiTest testCredentials).

        retailCRM names the methods without the API version: "/api/integration-modules/{code}" (api-client-php
        tests/src/ResourceGroup/ApiTest.php testCredentials), "/api/reference/payment-types", "/api/store/products"
        (retailcrm/mg-transport-telegram src/routing_test.go, a /api/credentials answer).
        """
        paths = grant.methods | set(CREDENTIALS_PATHS) if grant.methods is not None else set(API_METHODS)
        methods = sorted({"/api" + path[len(API_PREFIX):] if path.startswith(API_PREFIX + "/") else path
                          for path in paths})
        body = {"success": True, "credentials": methods,
                "siteAccess": "access_full" if grant.sites is None else "access_selective"}
        if grant.sites is not None:
            body["sitesAvailable"] = sorted(grant.sites)
        return body

    def _reference(self, path: str, params: dict, grant: KeyGrant) -> dict:
        """Sites as an object keyed by code, stores and price types as lists (api-client-go v5/response.go)."""
        name = REFERENCES[path]
        if name == "sites":
            visible = [s for s in self.sites if grant.sites is None or s in grant.sites]
            return {"success": True, "sites": {code: {"code": code, "name": code} for code in visible}}
        if name == "stores":
            return {"success": True, "stores": [{"code": code, "name": code, "active": True}
                                                for code in self.store_codes]}
        # RETAILCRM.md:31: the default price type is usually `base`
        return {"success": True, "priceTypes": [{"code": code, "name": code, "active": True, "default": code == "base"}
                                                for code in self.price_type_codes]}

    def _upload_inventories(self, path: str, params: dict, grant: KeyGrant) -> dict:
        """RETAILCRM.md:33-42: offers (JSON list) + site; per-warehouse available/purchasePrice."""
        offers = self._batch(params, "offers")
        # site: "needed when offers are matched by externalId/xmlId" (RETAILCRM.md:34-35), not by retailCRM's id
        site = self._site(params.get("site"), grant) if params.get("site") or not all("id" in o for o in offers) else None
        _refuse_if(_batch_errors(offers, "offers", "stores", self.store_codes, "Store"))
        return self._apply(offers, [site] * len(offers), self._set_stock, grant)

    def _upload_prices(self, path: str, params: dict, grant: KeyGrant) -> dict:
        """RETAILCRM.md:44-48: prices (JSON list), each item with its own site; remove: true deletes."""
        items = self._batch(params, "prices")
        _refuse_if(_batch_errors(items, "prices", "prices", self.price_type_codes, "Price type"))
        sites = [self._site(item.get("site"), grant) if item.get("site") or "id" not in item else None for item in items]
        return self._apply(items, sites, self._set_prices, grant)

    def _batch(self, params: dict, name: str) -> list:
        raw = params.get(name)
        if raw is None:
            # the text's pattern: api-client-go error.go missingParameterMatcher
            raise ApiError(400, f"Parameter '{name}' is missing")
        try:
            items = json.loads(raw)
        except ValueError:
            raise ApiError(400, ENTITY_FORMAT, {name: "This value should be valid JSON."}) from None  # assumed text
        if not isinstance(items, list):
            raise ApiError(400, ENTITY_FORMAT, {name: "This value should be a list."})  # assumed text
        self._note_batch(len(items))
        if len(items) > MAX_BATCH:
            raise ApiError(400, ENTITY_FORMAT,  # the limit: RETAILCRM.md:38, :47; the text is assumed
                           {name: f"This collection should contain {MAX_BATCH} elements or less."})
        return items

    def _site(self, site: str | None, grant: KeyGrant) -> str:
        if not site:  # needed when offers are matched by externalId/xmlId, unique per shop (RETAILCRM.md:34-35, :45)
            # ... but only from a key that reaches several shops: "If API-key gives access to data of several stores,
            # then in some API-methods additionally required specify symbolic code of store in GET|POST-parameter
            # site" (retailCRM's API rules, help.retailcrm.pro/Developers/ApiRules); a key of one shop names it
            reachable = [code for code in self.sites if grant.sites is None or code in grant.sites]
            if len(reachable) != 1:
                raise ApiError(400, "Parameter 'site' is missing")
            return reachable[0]
        if site not in self.sites:
            raise ApiError(400, ENTITY_FORMAT, {"site": _unknown("Site", site)})
        if grant.sites is not None and site not in grant.sites:
            raise ApiError(403, ACCESS_DENIED)  # a key limited to some shops: RETAILCRM.md:29
        return site

    def _apply(self, items: list[dict], sites: list[str | None], store, grant: KeyGrant) -> dict:
        """Update the offers it knows; list the rest in notFoundOffers (RETAILCRM.md:40-42)."""
        with self._lock:
            found = [self._find(site, item) for item, site in zip(items, sites)]
            if grant.sites is not None and any(f is not None and f[0] not in grant.sites for f in found):
                raise ApiError(403, ACCESS_DENIED)  # an offer of a shop the key may not use: RETAILCRM.md:29
            for item, offer in zip(items, found):
                if offer is not None:
                    store(*offer, item)
        not_found = [{key: item[key] for key in OFFER_KEYS if key in item} for item, f in zip(items, found) if f is None]
        return {"success": True, "processedOffersCount": len(items) - len(not_found), "notFoundOffers": not_found}

    def _find(self, site: str | None, item: dict) -> tuple[str, str] | None:
        """(site, externalId) of the offer an item names by id (retailCRM's own, one for the account: RETAILCRM.md:19),
        or by externalId or xmlId in the shop (RETAILCRM.md:18, 34-35)."""
        if "id" in item:
            return self._by_id.get(_int(item["id"]))
        if "externalId" in item:
            external_id = str(item["externalId"])
            return (site, external_id) if external_id in self.offers[site] else None
        external_id = self._by_xml_id[site].get(str(item["xmlId"]))
        return (site, external_id) if external_id is not None else None

    def _set_stock(self, site: str, external_id: str, offer: dict) -> None:
        stock = self._stock.setdefault((site, external_id), {})
        for entry in _entries(offer, "stores"):
            values = stock.setdefault(entry["code"], {})
            values.update({name: entry[name] for name in ("available", "purchasePrice") if name in entry})

    def _set_prices(self, site: str, external_id: str, item: dict) -> None:
        prices = self._prices.setdefault((site, external_id), {})
        for entry in _entries(item, "prices"):
            if entry.get("remove"):
                prices.pop(entry["code"], None)  # RETAILCRM.md:46
            elif "price" in entry:
                prices[entry["code"]] = entry["price"]


def _batch_errors(items: list, name: str, field: str, known: tuple, kind: str) -> dict:
    """Items that name no offer and entries (stores, prices) whose code the account lacks, by field path."""
    errors = {}
    for i, item in enumerate(items):
        if not (isinstance(item, dict) and any(key in item for key in OFFER_KEYS)):
            # one of id / externalId / xmlId: RETAILCRM.md:36, :45; the text is modelled on
            # api-client-go client_test.go ("Set one of the following fields: id, externalId")
            errors[f"{name}[{i}]"] = "Set one of the following fields: id, externalId, xmlId"
        for j, entry in enumerate(_entries(item, field)):
            if entry.get("code") not in known:
                errors[f"{name}[{i}][{field}][{j}][code]"] = _unknown(kind, entry.get("code"))
    return errors


def _refuse_if(errors: dict) -> None:
    if errors:
        raise ApiError(400, ENTITY_FORMAT, errors)  # the whole batch is refused: assumed


def _entries(item, name: str) -> list[dict]:
    """The objects in an item's list field (stores, prices); anything malformed counts as none."""
    value = item.get(name) if isinstance(item, dict) else None
    return [entry for entry in value if isinstance(entry, dict)] if isinstance(value, list) else []


def _unknown(kind: str, code) -> str:
    """How a missing code is reported; the sources do not show retailCRM's wording: assumed."""
    return f'{kind} with code "{code}" not found'


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _fault_page(status: int) -> bytes:
    """The HTML a proxy in front of retailCRM sends when the application is down."""
    if status == 503:
        return PROXY_503
    text = {500: "500 Internal Server Error", 502: "502 Bad Gateway"}.get(status, f"{status} Error")
    return f"<html><head><title>{text}</title></head><body><center><h1>{text}</h1></center></body></html>".encode()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # the default backlog of 5 drops the SYNs of a burst, which then arrive a second late
    request_queue_size = 128


class _Handler(QuietHandler):
    def dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else b""
        if url.path.startswith("/_emulator/"):
            return self.control(method, url.path, url.query, body)
        emulator, faults = self.emulator, self.emulator.faults
        reset, injected, _ = faults.draw()
        if faults.latency_ms:
            time.sleep(faults.latency_ms / 1000)
        if reset:
            emulator._note(url.path, 0)
            return self.reset_connection()
        if faults.outage or injected:
            status = 503 if faults.outage else injected
            emulator._note(url.path, status)
            return self.send(status, _fault_page(status), "text/html")
        # form fields and query both carry parameters; the key comes in the X-API-KEY header or the apiKey
        # parameter, GET or POST: "Authorization is performed by API-key, which is transmitted in GET|POST-parameter
        # apiKey" (retailCRM's API rules, help.retailcrm.pro/Developers/ApiRules, docs.simla.com
        # Developers/API/APIFeatures/APIRules); api-client-php lib/RetailCrm/Http/Client.php sends it in the POST body
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        params = {**query, **dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))}
        key = self.headers.get("X-API-Key") or params.get("apiKey")  # header names are case-insensitive
        if not emulator.rate_window.admit(key or ""):
            emulator._note_rate_limited()
            emulator._note(url.path, 503)
            return self.send_json(503, RATE_LIMITED)  # RETAILCRM.md:26-27
        status, payload = emulator.answer(method, url.path, params, key)
        emulator._note(url.path, status)
        self.send_json(status, payload)

    def reset_connection(self) -> None:
        """Abort before any response byte, as a dropped connection does."""
        self.close_connection = True
        abort_connection(self.connection)

    def send_json(self, status: int, payload) -> None:
        self.send(status, json.dumps(payload, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8")

    def send(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except OSError:
            self.close_connection = True

    def control(self, method: str, path: str, query: str, body: bytes) -> None:
        """/_emulator/*: stats, uploaded state, fault switches and feed loading for out-of-process use."""
        emulator = self.emulator
        try:
            payload = common_control(emulator, method, path, body)
            if path == "/_emulator/state" and method == "GET":
                payload = emulator.state()
            elif path == "/_emulator/icml" and method == "POST":
                site = dict(parse_qsl(query)).get("site") or emulator.sites[0]
                payload = {"site": site, "offers": emulator.load_icml(body, site)}
            if payload is None:
                return self.send_json(404, {"error": "not found"})
        except (ValueError, TypeError, etree.XMLSyntaxError) as error:
            return self.send_json(400, {"error": str(error)})
        self.send_json(200, payload)
