"""MoySklad API failures, classified in one place: which are worth retrying and what to tell a person."""

from __future__ import annotations

import json

# A 429 for too many parallel requests (1073) carries no time to wait (its headers tell the unit budget, not the
# parallel one): another request of the user ends soon.
PARALLEL_RETRY_SECONDS = 1.0
# What a 403 on an endpoint means in terms of the MoySklad role settings an admin can change.
PERMISSIONS = {
    "/entity/assortment": "view goods and services (Товары и услуги → Просматривать)",
    "/entity/product": "view goods and services (Товары и услуги → Просматривать)",
    "/entity/variant": "view goods and services (Товары и услуги → Просматривать)",
    "/entity/productfolder": "view product groups (Товары и услуги → Просматривать)",
    "/report/stock": "view the stock report (Остатки → Просматривать)",
    "/entity/store": "view warehouses (Склады → Просматривать)",
    "/context/companysettings": "view company settings (Настройки → Просматривать)",
    "/entity/organization": "view legal entities (Юрлица → Просматривать)",
    "/download": "download images (Товары и услуги → Просматривать)",
}


class MoySkladError(Exception):
    """Any failure talking to MoySklad. ``retriable`` says whether trying again can help."""

    retriable = False

    def __init__(self, message: str, *, status: int | None = None, codes: tuple[int, ...] = (), url: str = ""):
        super().__init__(message)
        self.status = status
        self.codes = codes
        self.url = url


class CredentialsRejected(MoySkladError):
    """401: the token or login/password is wrong, expired or revoked."""


class PermissionMissing(MoySkladError):
    """403: the user lacks a permission; the message names it."""


class RequestRejected(MoySkladError):
    """Another 4xx: the request itself is wrong; retrying the same request cannot help."""


class RateLimited(MoySkladError):
    """429: over the unit budget (1049) or too many parallel requests (1073)."""

    retriable = True

    def __init__(self, message: str, *, retry_after: float, **kwargs):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ServerFailure(MoySkladError):
    """5xx: MoySklad or a proxy in front of it failed; usually passes."""

    retriable = True


class TransportFailure(MoySkladError):
    """Timeouts, resets, truncated or undecodable bodies: the answer never arrived whole."""

    retriable = True


class AccountMismatch(MoySkladError):
    """The catalog store holds another MoySklad account (or the demo's): syncing would mix two catalogs."""


ONE_ACCOUNT_PER_STORE = "One store holds one account"  # in every AccountMismatch message (and so in its run's error)


def error_messages(body: bytes | str | None) -> tuple[list[str], tuple[int, ...]]:
    """The ``errors[].error`` texts and codes of a MoySklad error body; empty when it has none."""
    if not body:
        return [], ()
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return [], ()
    errors = data.get("errors") if isinstance(data, dict) else None
    if not isinstance(errors, list):
        return [], ()
    texts, codes = [], []
    for item in errors:
        if isinstance(item, dict):
            if item.get("error"):
                texts.append(str(item["error"]))
            if isinstance(item.get("code"), int):
                codes.append(item["code"])
    return texts, tuple(codes)


def classify(status: int, body: bytes | None, headers, path: str, url: str) -> MoySkladError:
    """Turn a non-2xx answer into the error a caller handles and a person can act on."""
    texts, codes = error_messages(body)
    server_text = "; ".join(texts)
    kwargs = {"status": status, "codes": codes, "url": url}
    if status == 401 or 1056 in codes:
        detail = server_text or headers.get("X-Lognex-Auth-Message") or "no details"
        return CredentialsRejected(
            f"MoySklad rejected the credentials: {detail}. Check moysklad.token (or the login and "
            f"password) in the config or the MOYSKLAD_* environment variables; a token is revoked "
            f"when a new one is issued for the same user.",
            **kwargs,
        )
    if status == 403:
        needed = next((p for prefix, p in PERMISSIONS.items() if path.startswith(prefix)), f"access to {path}")
        return PermissionMissing(
            f"MoySklad refused {path}: the user lacks the permission to {needed}. "
            f"An administrator can grant it in MoySklad: Настройки → Сотрудники → Права."
            + (f" Server said: {server_text}" if server_text else ""),
            **kwargs,
        )
    if status == 429:
        retry_after = _milliseconds(headers.get("X-Lognex-Retry-After"))
        if retry_after is None and 1073 in codes:  # too many at once: one of them is done in a moment
            retry_after = PARALLEL_RETRY_SECONDS
        if retry_after is None:
            retry_after = _milliseconds(headers.get("X-Lognex-Retry-TimeInterval")) or 3.0
        kind = "too many parallel requests" if 1073 in codes else "request budget used up"
        return RateLimited(f"MoySklad throttled {path} ({kind}): {server_text or 'HTTP 429'}", retry_after=retry_after, **kwargs)
    if status >= 500:
        return ServerFailure(f"MoySklad answered HTTP {status} for {path}" + (f": {server_text}" if server_text else ""), **kwargs)
    if status == 415:
        return RequestRejected(f"MoySklad answered 415 for {path}: the request lacked Accept-Encoding: gzip", **kwargs)
    return RequestRejected(
        f"MoySklad rejected {path} (HTTP {status}): {server_text or 'no error text in the answer'}", **kwargs
    )


def _milliseconds(value) -> float | None:
    try:
        return max(0.0, float(value) / 1000.0)
    except (TypeError, ValueError):
        return None
