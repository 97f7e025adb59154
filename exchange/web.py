"""The CommerceML exchange endpoint 1C and MoySklad call: ``/exchange/1c`` and ``/1c_exchange.php``.

Dispatch only: each protocol step is answered by the module that owns it (sessions, uploads,
imports, orders). Every answer is ``text/plain`` with status 200, lines of
``success``/``progress``/``failure``: 1C shows the text after ``failure`` to its operator, while an
HTML error page would reach it as garbage. Secrets (the Authorization header, the session cookie
and sessid) are never logged; note that sessid travels in the query string, so keep access logs
private.
"""

from __future__ import annotations

import logging
import re
import time
from typing import TYPE_CHECKING

from flask import Blueprint, Response, current_app, g, request
from werkzeug.exceptions import HTTPException

from core.credentials import basic_auth_matches
from core.mailbox import EXCHANGE
from core.settings import Settings
from exchange.sessions import (
    COOKIE_NAME,
    ExchangeSession,
    LoginThrottle,
    Refused,
    find_session,
    open_session,
    prune_sessions,
)
from exchange.uploads import UploadError, receive, safe_name

if TYPE_CHECKING:
    from store import ExchangeLog

# The steps' modules (imports, orders) and the store are imported where a request needs them: the app and
# its command line start without lxml or SQLite.

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
    settings: Settings = current_app.config["SETTINGS"]
    kind, mode = request.args.get("type"), request.args.get("mode")
    if not settings.exchange.password:
        return _failure("обмен с 1С выключен: на сайте не задан пароль обмена (exchange.password)")
    modes = MODES.get(kind)
    if modes is None:
        return _failure(f"неизвестный тип обмена {kind!r}: поддерживаются type=catalog и type=sale")
    if mode != "checkauth" and mode not in modes:
        return _failure(f"неизвестный режим обмена {mode!r} для type={kind}")
    from store import ExchangeLog

    with ExchangeLog(settings.exchange_log_path) as log_store:  # the session log, not the catalog
        try:
            if mode == "checkauth":
                return _text(_checkauth(log_store, settings))
            session = find_session(log_store, settings.exchange_dir, _tokens(), settings.exchange.session_minutes)
            try:
                answer = modes[mode](session, log_store, settings)
                session.touch()
                if kind == "catalog":  # the session's next file may mean the catalog is whole only after it
                    settings.mailbox.prolong(EXCHANGE)
            except (Refused, UploadError) as exc:
                _record_failure(log_store, session, str(exc))
                raise
            return answer if isinstance(answer, Response) else _text(answer)
        except (Refused, UploadError) as exc:
            log.warning("exchange mode=%s refused: %s", mode, exc)
            return _failure(str(exc))


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


def _record_failure(log_store: ExchangeLog, session: ExchangeSession, reason: str) -> None:
    """Log a refusal with its session (the log is its own file: this never waits for an import)."""
    with session.state() as state:
        state["failure"] = reason
    log_store.update_session(session.id, result="failed", error=reason)


def _checkauth(log_store: ExchangeLog, settings: Settings) -> list[str]:
    """HTTP Basic login; repeated failures from one address are refused for a while."""
    config, root = settings.exchange, settings.exchange_dir
    address = request.remote_addr or "unknown"
    LoginThrottle(root / "login-failures.json").attempt(
        address, lambda: basic_auth_matches(request.authorization, config.login, config.password))
    prune_sessions(log_store, root, config.session_minutes)
    session = open_session(log_store, root, address)
    log.info("exchange session %s opened for %s", session.id, address)
    if request.args.get("type") == "catalog":
        from exchange.catalog_import import prepare_parser  # here, not at the top: see the note on imports above

        prepare_parser()  # the parser's fork server starts while 1C uploads the files
    return ["success", COOKIE_NAME, session.token, f"sessid={session.token}", f"timestamp={int(time.time())}"]


# --- the steps; each takes (session, session log, settings) -------------------------------------------

def _init(session, log_store, settings: Settings) -> list[str]:
    """What 1C must respect: archive or not (never for orders: status documents are small), and the largest chunk."""
    version = request.args.get("version", "")
    zipped = settings.exchange.zip and request.args.get("type") == "catalog"
    return [f"zip={'yes' if zipped else 'no'}", f"file_limit={settings.exchange.file_limit}",
            f"sessid={session.token}", f"version={version if VERSION.fullmatch(version) else '3.1'}"]


def _file(session, log_store, settings: Settings) -> list[str]:
    receive(session, _filename(), request.stream, request.content_length, settings.exchange)
    return ["success"]


def _import(session, log_store, settings: Settings) -> list[str]:
    from exchange.imports import request_import

    return request_import(session, _filename(), settings.store_path, settings.images_dir, log_path=log_store.path,
                          mailbox=settings.mailbox, limits=settings.exchange)


def _deactivate(session, log_store, settings: Settings) -> list[str]:
    from exchange.imports import deactivate

    deactivate(session, settings.store_path, settings.mailbox)
    return ["success"]


def _complete(session, log_store, settings: Settings) -> list[str]:
    from exchange.imports import complete

    complete(session, log_store, settings.mailbox)
    return ["success"]


def _sale_complete(session, log_store, settings: Settings) -> list[str]:
    from exchange.imports import complete

    complete(session, log_store)
    return ["success"]


def _query(session, log_store, settings: Settings) -> Response:
    from exchange import orders

    body, content_type = orders.query_orders(session, settings.store_path, settings.exchange)
    return Response(body, status=200, content_type=content_type)


def _success(session, log_store, settings: Settings) -> list[str]:
    from exchange import orders

    orders.confirm_orders(session, settings.store_path)
    return ["success"]


def _sale_file(session, log_store, settings: Settings) -> list[str]:
    from exchange import orders

    orders.receive_status_file(session, log_store, settings.store_path, _filename(), request.stream,
                               request.content_length, settings.exchange)
    return ["success"]


def _sale_import(session, log_store, settings: Settings) -> list[str]:
    from exchange import orders

    orders.import_status_file(session, log_store, settings.store_path, _filename())
    return ["success"]


SESSION_MODES = {"init": _init, "file": _file, "import": _import, "deactivate": _deactivate, "complete": _complete}
SALE_MODES = {"init": _init, "file": _sale_file, "import": _sale_import, "query": _query, "success": _success,
              "complete": _sale_complete}
MODES = {"catalog": SESSION_MODES, "sale": SALE_MODES}


# --- the request and the answer ---------------------------------------------------------------------

def _filename() -> str:
    return safe_name(request.args.get("filename"))


def _tokens() -> list[str]:
    """Session tokens the request carries: the cookie from checkauth, else the sessid parameter."""
    return [token for token in (request.cookies.get(COOKIE_NAME), request.args.get("sessid")) if token]


def _text(lines: list[str]) -> Response:
    return Response("\n".join(lines), status=200, mimetype="text/plain")


def _failure(reason: str) -> Response:
    return _text(["failure", reason])


def _error(exc: Exception) -> Response:
    """Whatever went wrong, 1C gets a failure text it can show, never an HTML page."""
    import sqlite3

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
    if _is_exchange_path(request.path):
        return _error(exc)
    return exc


def _is_exchange_path(path: str) -> bool:
    """The exchange paths as an operator may type them: any case, slashes more or less, anything under /exchange,
    1c_exchange.php in any folder (1C-Bitrix's /bitrix/admin/1c_exchange.php)."""
    parts = [part for part in path.lower().split("/") if part]
    return bool(parts) and (parts[0] == "exchange" or PATHS[1].lstrip("/") in parts)
