"""The JSON orders API: ``POST /api/orders`` puts an order in, ``GET /api/orders/<number>`` reads it back.

Authenticated by ``api.key`` (``Authorization: Bearer <key>`` or ``X-Api-Key: <key>``, compared in
constant time); off (403) while no key is set. Every answer, refusals included, is a JSON object;
a refusal is ``{"error": "<what is wrong>", "field": "<which field>"}`` with the matching status.

POST is idempotent on the order number: the same order again answers 200 and changes nothing; a
changed order answers 200, becomes a new revision and is sent to 1C again with the next
``type=sale&mode=query`` (statuses 1C reported are kept, but for ``status`` and ``cancelled`` when
the shop gives them: that is how a cancellation reaches 1C); a new number answers 201.
"""

from __future__ import annotations

import json
import logging
from decimal import Decimal
from typing import TYPE_CHECKING

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import HTTPException

from core.credentials import tokens_match
from core.request_body import read_limited

if TYPE_CHECKING:
    from store import CatalogStore

# orders.validate and the store are imported where a request needs them: the app starts without SQLite.

log = logging.getLogger(__name__)

orders_api_bp = Blueprint("orders_api", __name__)

ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
# A request waits this long for a catalog import to commit before it is answered 503.
STORE_WAIT_SECONDS = 10


class ApiError(Exception):
    """A request refused with an HTTP status and a message naming what is wrong."""

    def __init__(self, status: int, message: str, field: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.field, self.headers = status, field, headers or {}


@orders_api_bp.route("/api/orders", methods=ANY_METHOD)
def create_order() -> Response:
    """Create or update one order (idempotent on its number)."""
    from orders.validate import order_json, validate_order

    _authorize()
    if request.method != "POST":
        raise ApiError(405, "use POST /api/orders to put an order in, GET /api/orders/<number> to read one",
                       headers={"Allow": "POST"})
    body = _json_body()
    with _store() as store:
        order = validate_order(body, base_currency=store.base_currency())
        result = store.save_order(order.number, order.columns, order.items, order.content_hash, order.statuses,
                                  order.earlier_hash)
        row = store.order(order.number)
    log.info("orders api: order %s %s (revision %s) from %s", order.number, result, row["revision"], request.remote_addr)
    return _json({"result": result, **order_json(row)}, 201 if result == "created" else 200,
                 {"Location": f"/api/orders/{order.number}"})


@orders_api_bp.route("/api/orders/<path:number>", methods=ANY_METHOD)
def read_order(number: str) -> Response:
    """One order with its lines, the statuses 1C reported and its history."""
    from orders.validate import order_json

    _authorize()
    if request.method not in ("GET", "HEAD"):
        raise ApiError(405, "orders are read with GET; POST /api/orders creates or updates one", headers={"Allow": "GET"})
    with _store() as store:
        row = store.order(number)
    if row is None:
        raise ApiError(404, f"order {number!r} not found", "number")
    return _json(order_json(row), 200)


@orders_api_bp.route("/api/", methods=ANY_METHOD)
@orders_api_bp.route("/api/<path:rest>", methods=ANY_METHOD)
def unknown(rest: str = "") -> Response:
    """Any other /api/ address: a JSON 404, like every other answer of the API."""
    raise ApiError(404, f"no such API address /api/{rest}: use /api/orders")


def _authorize() -> None:
    """The configured key in either header; otherwise 403 (API off) or 401."""
    key = current_app.config["SETTINGS"].api.key
    if not key:
        raise ApiError(403, "the orders API is off: set api.key in the config (or SKLADBRIDGE_API_KEY)")
    given = _presented_key()
    challenge = {"WWW-Authenticate": 'Bearer realm="skladbridge orders"'}
    if given is None:
        raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>' or 'X-Api-Key: <key>'", headers=challenge)
    if not tokens_match(given, key):
        log.warning("orders api: wrong API key from %s", request.remote_addr)
        raise ApiError(401, "wrong API key", headers=challenge)


def _presented_key() -> str | None:
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return request.headers.get("X-Api-Key") or None


def _json_body():
    """The request body as JSON, at most api.max_body_bytes; numbers with decimals read exactly."""
    limit = current_app.config["SETTINGS"].api.max_body_bytes
    data = read_limited(request, limit)
    if data is None:
        raise ApiError(413, f"the body is larger than {limit} bytes (api.max_body_bytes)")
    if request.mimetype != "application/json":
        raise ApiError(415, f"send the order as JSON with Content-Type: application/json, got {request.mimetype or 'none'!r}")
    try:
        body = json.loads(data.decode("utf-8-sig"), parse_float=Decimal, parse_constant=_no_constant)
        json.dumps(body, ensure_ascii=False, default=str).encode()  # a "\ud800" escape: no character of any text
    except UnicodeError:
        raise ApiError(400, "the body is not UTF-8 text (or escapes half a character, \\ud800-\\udfff alone)") from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError:  # Python reads no integer of more than 4300 digits
        raise ApiError(400, "the body is not valid JSON: a number has too many digits") from None
    except RecursionError:  # [[[[… nested deeper than Python's stack
        raise ApiError(400, "the body is not valid JSON for an order: nested too deeply") from None
    return body


def _no_constant(name: str):
    raise ApiError(400, f"the body is not valid JSON: {name} is not a number")


def _store() -> CatalogStore:
    from store import open_catalog

    return open_catalog(current_app.config["SETTINGS"].store_path, wait_seconds=STORE_WAIT_SECONDS)


def _json(body: dict, status: int, headers: dict | None = None) -> Response:
    return Response(json.dumps(body, ensure_ascii=False, indent=1), status=status, headers=headers or {},
                    mimetype="application/json")


@orders_api_bp.errorhandler(Exception)
def _error(exc: Exception) -> Response:
    """Every refusal and failure of the API as JSON; details of unexpected ones only in the server log."""
    import sqlite3

    from orders.validate import OrderInvalid

    if isinstance(exc, OrderInvalid):
        return _json({"error": str(exc), "field": exc.field}, 400)
    if isinstance(exc, ApiError):
        body = {"error": str(exc), **({"field": exc.field} if exc.field else {})}
        return _json(body, exc.status, exc.headers)
    if isinstance(exc, HTTPException):
        return _json({"error": exc.description or exc.name}, exc.code or 500)
    if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
        log.warning("orders api: the store stayed locked for %s s: %s", STORE_WAIT_SECONDS, exc)
        return _json({"error": "the store is busy with a catalog import; retry in a minute"}, 503, {"Retry-After": "60"})
    log.error("orders api: request failed", exc_info=exc)
    return _json({"error": "internal error; details are in the server log"}, 500)
