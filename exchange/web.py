"""The CommerceML exchange endpoint 1C and MoySklad call: ``/exchange/1c`` and ``/1c_exchange.php``.

Every answer is ``text/plain`` with status 200, lines of ``success``/``progress``/``failure``: 1C
shows the text after ``failure`` to its operator, while an HTML error page would reach it as
garbage. Secrets (the Authorization header, the session cookie and sessid) are never logged;
note that sessid travels in the query string, so keep access logs private.
"""

from __future__ import annotations

import hmac
import logging
import math
import re
import sqlite3
import time

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import HTTPException

from exchange.imports import IMPORT_WAIT_SECONDS, complete, deactivate, request_import
from exchange.sessions import COOKIE_NAME, LoginThrottle, Refused, find_session, open_session, prune_sessions
from exchange.uploads import UploadError, append_stream, safe_name, target_path
from settings import ExchangeSettings
from store import CatalogStore

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
    log.info("exchange type=%s mode=%s filename=%.200r from %s", kind, mode, request.args.get("filename"), request.remote_addr)
    if not config.password:
        return _failure("обмен с 1С выключен: на сайте не задан пароль обмена (exchange.password)")
    if kind == "sale":
        return _failure("обмен заказами ещё не поддерживается")
    if kind != "catalog":
        return _failure(f"неизвестный тип обмена {kind!r}: поддерживается type=catalog")
    if mode != "checkauth" and mode not in SESSION_MODES:
        return _failure(f"неизвестный режим обмена {mode!r}")
    store = CatalogStore(_settings().exchange_log_path)  # the session log, not the catalog
    try:
        if mode == "checkauth":
            return _text(_checkauth(store, config))
        session = find_session(store, _root(), _tokens(), config.session_minutes)
        try:
            return _text(SESSION_MODES[mode](session, store, config))
        except (Refused, UploadError) as exc:
            _record_failure(store, session, str(exc))
            raise
    except (Refused, UploadError) as exc:
        log.warning("exchange mode=%s refused: %s", mode, exc)
        return _failure(str(exc))
    finally:
        store.close()


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
    if not _credentials_match(config):
        throttle.failed(address)
        raise Refused("неверный логин или пароль обмена")
    throttle.succeeded(address)
    prune_sessions(store, _root(), config.session_minutes)
    session = open_session(store, _root(), address)
    log.info("exchange session %s opened for %s", session.id, address)
    return ["success", COOKIE_NAME, session.token, f"sessid={session.token}", f"timestamp={int(time.time())}"]


def _credentials_match(config: ExchangeSettings) -> bool:
    """Both compared in constant time, and both always compared: timing tells nothing."""
    auth = request.authorization
    if auth is None or auth.type != "basic":
        return False
    login_ok = hmac.compare_digest((auth.username or "").encode(), config.login.encode())
    password_ok = hmac.compare_digest((auth.password or "").encode(), config.password.encode())
    return login_ok and password_ok


def _init(session, store, config: ExchangeSettings) -> list[str]:
    """What 1C must respect: archive or not, and the largest chunk it may post."""
    version = request.args.get("version", "")
    return [f"zip={'yes' if config.zip else 'no'}", f"file_limit={config.file_limit}",
            f"sessid={session.token}", f"version={version if VERSION.fullmatch(version) else '3.1'}"]


def _file(session, store, config: ExchangeSettings) -> list[str]:
    """Append the raw body to the named file, streamed in chunks within the request and session limits."""
    name = safe_name(request.args.get("filename"))
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
    return ["success"]


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
                          settings.data_dir / "images", log_path=store.path)


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


SESSION_MODES = {"init": _init, "file": _file, "import": _import,
                 "deactivate": _deactivate, "complete": _complete}


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
