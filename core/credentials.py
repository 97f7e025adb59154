"""Credential checks shared by the web endpoints: constant-time, and never short-circuited."""

from __future__ import annotations

import hmac


def basic_auth_matches(authorization, login: str, password: str) -> bool:
    """HTTP Basic credentials (``request.authorization``) against the configured pair.

    Both halves are always compared, in constant time, so the timing tells nothing about which
    one was wrong.
    """
    if authorization is None or authorization.type != "basic":
        return False
    login_ok = hmac.compare_digest((authorization.username or "").encode(), login.encode())
    password_ok = hmac.compare_digest((authorization.password or "").encode(), password.encode())
    return login_ok and password_ok


def tokens_match(given: str | None, expected: str | None) -> bool:
    """A secret from a request against the configured one; an unset secret matches nothing."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8"))
