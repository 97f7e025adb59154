"""The CommerceML exchange endpoint 1C and MoySklad call: ``/exchange/1c`` and ``/1c_exchange.php``.

Every answer is ``text/plain`` with status 200, lines of ``success``/``progress``/``failure``: 1C
shows the text after ``failure`` to its operator, while an HTML error page would reach it as
garbage. Secrets (the Authorization header, the session cookie and sessid) are never logged;
note that sessid travels in the query string, so keep access logs private.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import re
import sqlite3
import time

from flask import Blueprint, Response, current_app, g, request
from werkzeug.exceptions import HTTPException

from credentials import basic_auth_matches

from exchange.imports import IMPORT_WAIT_SECONDS, complete, deactivate, request_import
from exchange.orders import (FORMATS, MAX_STATUS_BYTES, IncompleteDocument, StatusDocumentError, apply_status_document,
                             render_orders)
from exchange.sessions import COOKIE_NAME, LoginThrottle, Refused, files_summary, find_session, open_session, prune_sessions
from exchange.uploads import UploadError, append_stream, safe_name, target_path
from settings import ExchangeSettings
from store import CatalogStore, StoreBusy, utc_now

log = logging.getLogger(__name__)

exchange_bp = Blueprint("exchange", __name__)

PATHS = ("/exchange/1c", "/1c_exchange.php")
VERSION = re.compile(r"\d{1,2}(\.\d{1,3}){0,3}")
HTTP_REASONS = {
    400: "неверный запрос",
    404: "адрес обмена не найден: используйте /exchange/1c",
    405: "метод не поддерживается: используйте GET или POST",
    413: "запрос слишком большой",
}


@exchange_bp.route(PATHS[0], methods=["GET", "POST"])
@exchange_bp.route(PATHS[1], methods=["GET", "POST"])
def exchange() -> Response:
    """Dispatch one protocol step; every refusal becomes ``failure\\n<reason>``."""
    config: ExchangeSettings = current_app.config["SETTINGS"].exchange
    kind, mode = request.args.get("type"), request.args.get("mode")
    if not config.password:
        return _failure("обмен с 1С выключен: на сайте не задан пароль обмена (exchange.password)")
    modes = MODES.get(kind)
    if modes is None:
        return _failure(f"неизвестный тип обмена {kind!r}: поддерживаются type=catalog и type=sale")
    if mode != "checkauth" and mode not in modes:
        return _failure(f"неизвестный режим обмена {mode!r} для type={kind}")
    store = CatalogStore(_settings().exchange_log_path)  # the session log, not the catalog
    try:
        if mode == "checkauth":
            return _text(_checkauth(store, config))
        session = find_session(store, _root(), _tokens(), config.session_minutes)
        try:
            answer = modes[mode](session, store, config)
            return answer if isinstance(answer, Response) else _text(answer)
        except (Refused, UploadError) as exc:
            _record_failure(store, session, str(exc))
            raise
    except (Refused, UploadError) as exc:
        log.warning("exchange mode=%s refused: %s", mode, exc)
        return _failure(str(exc))
    finally:
        store.close()


@exchange_bp.before_request
def _started() -> None:
    g.exchange_started = time.monotonic()


@exchange_bp.after_request
def _log_request(response: Response) -> Response:
    """One line per exchange request: what 1C asked, what it heard, how long it took."""
    started = g.get("exchange_started")
    if response.mimetype == "text/plain" and response.content_length and response.content_length < 4096:
        answer = response.get_data(as_text=True).replace("\n", " | ")
        answer = answer if not answer.startswith("success | ") or request.args.get("mode") != "checkauth" else "success (session opened)"
    else:
        answer = f"{response.mimetype}, {response.content_length or 0} bytes"
    log.info("exchange type=%s mode=%s filename=%.200r from %s: %s (%d bytes in) in %.0f ms",
             request.args.get("type"), request.args.get("mode"), request.args.get("filename"), request.remote_addr,
             answer, request.content_length or 0, (time.monotonic() - started) * 1000 if started else 0)
    return response


def _record_failure(store: CatalogStore, session, reason: str) -> None:
    """Log a refusal with its session (the log is its own file: this never waits for an import)."""
    with session.state() as state:
        state["failure"] = reason
    store.update_exchange_session(session.id, result="failed", error=reason)


def _checkauth(store: CatalogStore, config: ExchangeSettings) -> list[str]:
    """HTTP Basic login; repeated failures from one address are refused for a while."""
    address = request.remote_addr or "unknown"
    throttle = LoginThrottle(_root() / "login-failures.json")
    wait = throttle.refused_for(address)
    if wait:
        raise Refused(f"слишком много неудачных попыток входа: повторите через {math.ceil(wait / 60)} мин")
    if not basic_auth_matches(request.authorization, config.login, config.password):
        throttle.failed(address)
        raise Refused("неверный логин или пароль обмена")
    throttle.succeeded(address)
    prune_sessions(store, _root(), config.session_minutes)
    session = open_session(store, _root(), address)
    log.info("exchange session %s opened for %s", session.id, address)
    return ["success", COOKIE_NAME, session.token, f"sessid={session.token}", f"timestamp={int(time.time())}"]


def _init(session, store, config: ExchangeSettings) -> list[str]:
    """What 1C must respect: archive or not (never for orders: status documents are small), and the largest chunk."""
    version = request.args.get("version", "")
    zipped = config.zip and request.args.get("type") == "catalog"
    return [f"zip={'yes' if zipped else 'no'}", f"file_limit={config.file_limit}",
            f"sessid={session.token}", f"version={version if VERSION.fullmatch(version) else '3.1'}"]


def _file(session, store, config: ExchangeSettings) -> list[str]:
    """Append the raw body to the named file (see :func:`_receive`)."""
    _receive(session, safe_name(request.args.get("filename")), config)
    return ["success"]


def _receive(session, name: str, config: ExchangeSettings) -> tuple:
    """Append the raw body to the named file, streamed in chunks within the request and session limits.

    Returns the file's path and the bytes this request wrote.
    """
    with session.upload_lock():
        room = config.max_session_bytes - session.read_state()["bytes"]
        limit = min(config.file_limit, room)
        too_large = (f"файл {name}: больше {config.file_limit} байт за один запрос (file_limit)" if limit == config.file_limit
                     else f"файл {name}: превышен объём сеанса {config.max_session_bytes} байт (exchange.max_session_bytes)")
        if (request.content_length or 0) > limit:
            raise UploadError(too_large)
        path = target_path(session.upload_dir, name)
        new = _start_or_append(session, name, path)
        try:
            written = append_stream(request.stream, path, limit, too_large)
        except OSError as exc:
            raise UploadError(f"не удалось записать файл {name}: {exc.strerror or exc}") from None
        with session.state() as state:
            state["bytes"] += written
            _count_file(state, name, written, new)
    log.info("exchange session %s: %s bytes appended to %r", session.id, written, name)
    return path, written


def _start_or_append(session, name: str, path) -> bool:
    """A name already imported or extracted in this session starts over; returns whether the file is new."""
    with session.state() as state:
        job = state["imports"].get(name)
        if job and job["status"] == "running":
            raise Refused(f"файл {name} сейчас загружается в каталог: дождитесь окончания")
        if job or state["zips"].get(name, "pending") != "pending":
            state["imports"].pop(name, None)
            state["zips"].pop(name, None)
            path.unlink(missing_ok=True)
        if name.lower().endswith(".zip"):
            state["zips"][name] = "pending"
    return not path.exists()


def _count_file(state: dict, name: str, written: int, new: bool) -> None:
    """Top-level files are listed one by one; pictures in subfolders are counted per folder."""
    if "/" not in name:
        state["files"].setdefault(name, {"bytes": 0})["bytes"] += written
        return
    folder = state["files"].setdefault(name.split("/")[0] + "/", {"files": 0, "bytes": 0})
    folder["bytes"] += written
    folder["files"] += int(new)


def _import(session, store: CatalogStore, config) -> list[str]:
    settings = _settings()
    return request_import(session, safe_name(request.args.get("filename")), settings.store_path,
                          settings.images_dir, log_path=store.path)


def _deactivate(session, store: CatalogStore, config) -> list[str]:
    catalog = CatalogStore(_settings().store_path, wait_seconds=IMPORT_WAIT_SECONDS)
    try:
        deactivate(session, catalog)
    finally:
        catalog.close()
    return ["success"]


def _complete(session, store: CatalogStore, config) -> list[str]:
    complete(session, store)
    return ["success"]


# --- type=sale: orders out (query, success) and their statuses back (file, import) -----------------

def _query(session, store: CatalogStore, config: ExchangeSettings) -> Response:
    """The orders 1C has not confirmed, as a CommerceML document; recorded as this session's latest query."""
    with _orders_store() as catalog:
        query_id, orders = catalog.start_order_query(session.id, config.orders_format, config.orders_per_query)
    body = render_orders(orders, config.orders_format, dt.datetime.now())
    log.info("exchange session %s: query %s sent %s orders as %s (%s bytes)", session.id, query_id, len(orders),
             config.orders_format, len(body))
    return Response(body, status=200, content_type=FORMATS[config.orders_format].content_type)


def _success(session, store: CatalogStore, config: ExchangeSettings) -> list[str]:
    """The orders of this session's latest query are in 1C: they are not sent again (unless changed)."""
    with _orders_store() as catalog:
        confirmed = catalog.confirm_order_query(session.id)
    if confirmed is None:
        raise Refused("нечего подтверждать: в этом сеансе заказы не выгружались (сначала mode=query)")
    log.info("exchange session %s: 1C confirmed %s orders", session.id, confirmed)
    return ["success"]


def _sale_file(session, store: CatalogStore, config: ExchangeSettings) -> list[str]:
    """A status document: stored like any upload, applied as soon as it is complete (as Bitrix sites do).

    1C splits a file larger than file_limit into chunks of exactly file_limit bytes: a document that
    is still open after such a chunk waits for the next one (or for mode=import).
    """
    name = safe_name(request.args.get("filename"))
    if not name.lower().endswith(".xml") or "/" in name:
        raise UploadError(f"файл {name}: в обмене заказами принимаются только документы XML (init отвечает zip=no)")
    path, written = _receive(session, name, config)
    return _apply_status_file(session, store, name, path, more_may_follow=written == config.file_limit)


def _sale_import(session, store: CatalogStore, config: ExchangeSettings) -> list[str]:
    """mode=import after mode=file: the outcome of the document, applying it now if it was still waiting."""
    name = safe_name(request.args.get("filename"))
    job = session.read_state()["imports"].get(name)
    if job:
        return ["success"] if job["status"] == "ok" else ["failure", job["error"]]
    path = target_path(session.upload_dir, name)
    if not path.is_file():
        raise Refused(f"файл {name} не был загружен в этом сеансе (сначала mode=file)")
    return _apply_status_file(session, store, name, path, more_may_follow=False)


def _apply_status_file(session, store: CatalogStore, name: str, path, *, more_may_follow: bool) -> list[str]:
    """Apply a complete status document in one transaction and log the outcome with the session."""
    try:
        with _orders_store() as catalog:
            with open(path, "rb") as upload:  # a byte past the limit is enough for parse_status_document to refuse it
                data = upload.read(MAX_STATUS_BYTES + 1)
            job = {"status": "ok", "results": apply_status_document(catalog, data, name, f"session {session.id}")}
    except IncompleteDocument as exc:
        if more_may_follow:
            log.info("exchange session %s: %s is not complete yet, waiting for its next chunk", session.id, name)
            return ["success"]
        job = {"status": "failed", "error": str(exc)}
    except StatusDocumentError as exc:
        job = {"status": "failed", "error": str(exc)}
    except StoreBusy:
        job = {"status": "failed", "error": "заказы сейчас обновляет другой обмен; повторите обмен позже"}
    except sqlite3.OperationalError as exc:  # recorded, so that the file sent again starts over
        if "locked" not in str(exc):
            raise
        log.warning("exchange session %s: %s waited too long for the catalog store: %s", session.id, name, exc)
        job = {"status": "failed", "error": "каталог сейчас занят другой загрузкой; повторите обмен позже"}
    with session.state() as state:
        state["imports"][name] = {**job, "finished": utc_now()}
    store.update_exchange_session(session.id, files=files_summary(state), bytes=state["bytes"])
    if job["status"] != "ok":
        raise Refused(job["error"])
    return ["success"]


# Orders are written in short transactions; one waits this long for a catalog import to commit.
ORDERS_WAIT_SECONDS = 60


@contextlib.contextmanager
def _orders_store():
    """The catalog store, where orders live (the session log is another file)."""
    catalog = CatalogStore(_settings().store_path, wait_seconds=ORDERS_WAIT_SECONDS)
    try:
        yield catalog
    finally:
        catalog.close()


SESSION_MODES = {"init": _init, "file": _file, "import": _import,
                 "deactivate": _deactivate, "complete": _complete}
SALE_MODES = {"init": _init, "file": _sale_file, "import": _sale_import, "query": _query, "success": _success,
              "complete": _complete}
MODES = {"catalog": SESSION_MODES, "sale": SALE_MODES}


def _tokens() -> list[str]:
    """Session tokens the request carries: the cookie from checkauth, else the sessid parameter."""
    return [token for token in (request.cookies.get(COOKIE_NAME), request.args.get("sessid")) if token]


def _settings():
    return current_app.config["SETTINGS"]


def _root():
    return _settings().data_dir / "exchange"


def _text(lines: list[str]) -> Response:
    return Response("\n".join(lines), status=200, mimetype="text/plain")


def _failure(reason: str) -> Response:
    return _text(["failure", reason])


def _error(exc: Exception) -> Response:
    """Whatever went wrong, 1C gets a failure text it can show, never an HTML page."""
    if isinstance(exc, HTTPException):
        return _failure(HTTP_REASONS.get(exc.code, f"ошибка запроса (HTTP {exc.code})"))
    if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
        log.warning("exchange request waited too long for the catalog store: %s", exc)
        return _failure("каталог сейчас занят другой загрузкой; повторите обмен позже")
    log.error("exchange request failed", exc_info=exc)
    return _failure("внутренняя ошибка сервера; подробности в журнале сервера")


for _code in (400, 404, 405, 413, 500, Exception):
    exchange_bp.register_error_handler(_code, _error)


@exchange_bp.app_errorhandler(404)
@exchange_bp.app_errorhandler(405)
def _routing_error(exc: HTTPException):
    """Routing errors belong to no blueprint: answer those of the exchange paths as 1C expects."""
    if request.path.startswith("/exchange/") or request.path == PATHS[1]:
        return _error(exc)
    return exc
