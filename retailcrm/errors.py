"""retailCRM API failures, classified in one place: which are worth retrying and what to tell a person.

retailCRM answers errors as ``{"success": false, "errorMsg": "...", "errors": {...}}`` and tells
the kinds apart by ``errorMsg`` rather than by status (a wrong key is a 403, like a denied method),
so ``classify`` reads the text first, as the official PHP and Go clients do.
"""

from __future__ import annotations

import json
import re

# The errorMsg texts the official clients match on (api-client-php ApiExceptionFactory, api-client-go error.go).
MISSING_KEY = '"apiKey" is missing.'
WRONG_KEY = 'Wrong "apiKey" value.'
ACCESS_DENIED = "Access denied."
NO_ACCOUNT = "Account does not exist."
RATE_LIMIT_TEXT = "Rate limit exceeded"
RATE_WINDOW = 1.0  # seconds: the limit is 10 requests per second per key
KEY_MENU = "Администрирование → Интеграция → Ключи доступа к API"
# An error entry that names a code the account lacks: "Store with code "spb" not found" and the like.
UNKNOWN_CODE = re.compile(r"\b(not found|does not exist|doesn't exist|unknown|not exist)\b", re.IGNORECASE)
REFERENCE_FIELD = re.compile(r"\b(site|store|stores|price ?type|prices|code)\b", re.IGNORECASE)


class RetailCrmError(Exception):
    """Any failure talking to retailCRM. ``retriable`` says whether trying again can help.

    ``title`` and ``action`` are the operator's advice in Russian (health page, CLI); the message
    itself is English, for logs, and names what to fix.
    """

    retriable = False
    title = "Ошибка обмена с retailCRM"
    action = "Подробности — в журнале skladbridge."

    def __init__(self, message: str, *, status: int | None = None, path: str = "", server_text: str = ""):
        super().__init__(message)
        self.status = status
        self.path = path
        self.server_text = server_text


class KeyRejected(RetailCrmError):
    """The key is missing, wrong or deleted: nothing will work until someone sets a valid one."""

    title = "retailCRM не принял API-ключ"
    action = (f"Создайте ключ в retailCRM: {KEY_MENU}, разрешите ему загрузку остатков и цен "
              f"для нужного магазина и укажите ключ в настройках skladbridge.")


class AccessDenied(RetailCrmError):
    """The key is valid but may not call this method or act for this shop (site)."""

    title = "API-ключу не хватает прав в retailCRM"
    action = (f"Откройте ключ в retailCRM ({KEY_MENU}) и разрешите ему методы загрузки остатков и цен "
              f"и доступ к нужному магазину.")


class UnknownReference(RetailCrmError):
    """A warehouse (store), price type or shop (site) code that the account does not have."""

    title = "retailCRM не знает склад, тип цены или магазин"
    action = ("Сверьте коды складов, типов цен и магазинов в настройках skladbridge с символьными "
              "кодами в справочниках retailCRM (раздел «Администрирование»).")


class RequestRejected(RetailCrmError):
    """Another 4xx: the request itself is wrong; sending it again cannot help."""

    title = "retailCRM отклонил запрос"
    action = "Повтор не поможет: запрос нужно исправить. Передайте запись журнала разработчикам skladbridge."


class RateLimited(RetailCrmError):
    """503 "Rate limit exceeded" (or 429): over 10 requests a second for this key."""

    retriable = True
    title = "retailCRM просит реже обращаться к API"
    action = ("skladbridge подождёт и повторит сам. Если это повторяется, тем же ключом пользуется "
              "другая программа: выдайте ей отдельный ключ — лимит считается на ключ.")

    def __init__(self, message: str, *, retry_after: float, **kwargs):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ServerFailure(RetailCrmError):
    """5xx: retailCRM or a proxy in front of it failed; usually passes."""

    retriable = True
    title = "retailCRM временно не отвечает"
    action = "skladbridge повторит попытку сам. Если ошибка не проходит, проверьте, работает ли retailCRM."


class TransportFailure(RetailCrmError):
    """Timeouts, resets, unreadable bodies: the answer never arrived whole."""

    retriable = True
    title = "Нет связи с retailCRM"
    action = "Проверьте адрес аккаунта retailCRM в настройках и сеть; skladbridge повторит попытку сам."


def error_fields(body: bytes | str | None) -> tuple[str, list[tuple[str, str]]]:
    """``errorMsg`` and the ``errors`` entries (field, text) of an error body; empty when it has none."""
    try:
        data = json.loads(body or b"")
    except (ValueError, UnicodeDecodeError):
        return "", []
    if not isinstance(data, dict):
        return "", []
    errors = data.get("errors")
    # PHP serialises a list of errors as a JSON array and a keyed one as an object
    pairs = errors.items() if isinstance(errors, dict) else enumerate(errors) if isinstance(errors, list) else ()
    return str(data.get("errorMsg") or ""), [(str(field), str(text)) for field, text in pairs]


def unknown_reference(errors: list[tuple[str, str]]) -> str | None:
    """The error entry that says a site, store or price type code is unknown, if any."""
    for field, text in errors:
        if UNKNOWN_CODE.search(text) and REFERENCE_FIELD.search(f"{field} {text}"):
            return f"{field}: {text}"
    return None


def classify(status: int, body: bytes | None, headers, path: str, url: str) -> RetailCrmError:
    """Turn a non-2xx answer (or a 2xx whose body says ``success: false``) into the error a caller handles and a person
    can act on."""
    message, errors = error_fields(body)
    server_text = "; ".join([message] + [f"{field}: {text}" for field, text in errors]).strip("; ")
    kwargs = {"status": status, "path": path, "server_text": server_text}
    if message in (MISSING_KEY, WRONG_KEY):
        what = "no API key was sent" if message == MISSING_KEY else "the API key is wrong or was deleted"
        return KeyRejected(
            f"retailCRM rejected the API key for {path}: {what} ({message}). Create a key in retailCRM "
            f"({KEY_MENU}) and set it as the retailCRM API key in the skladbridge config.", **kwargs)
    if message == ACCESS_DENIED:
        return AccessDenied(
            f"retailCRM denied {path}: the API key may not call this method or act for this shop. Allow the "
            f"method and the shop in the key's settings ({KEY_MENU}).", **kwargs)
    if status == 429 or (status == 503 and message.startswith(RATE_LIMIT_TEXT)):
        return RateLimited(f"retailCRM throttled {path} (HTTP {status}: {message or 'too many requests'}): "
                           f"over 10 requests a second for this API key",
                           retry_after=_seconds(headers.get("Retry-After"), RATE_WINDOW), **kwargs)
    if status >= 500:
        return ServerFailure(f"retailCRM answered HTTP {status} for {path}"
                             + (f": {server_text}" if server_text else ""), **kwargs)
    if message == NO_ACCOUNT or (body or b"").lstrip()[:1] == b"<":
        # api-client-go error.go: an HTML answer means there is no account at this address
        return RequestRejected(f"no retailCRM account answers at {url} (HTTP {status}): check the retailCRM "
                               f"address in the skladbridge config", **kwargs)
    reference = unknown_reference(errors)
    if reference:
        return UnknownReference(f"retailCRM refused {path}: {reference}. Use the codes the account has "
                                f"(see sites(), stores() and price_types()) or create the missing one in "
                                f"retailCRM.", **kwargs)
    return RequestRejected(f"retailCRM rejected {path} (HTTP {status}): {server_text or 'no error text in the answer'}",
                           **kwargs)


def _seconds(value, default: float) -> float:
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return default
