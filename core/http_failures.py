"""How a request that got no answer is told to a person: the same words for MoySklad and retailCRM.

The clients put :func:`transport_reason` in their errors' messages; a check reads it back with
:func:`unreachable_problem` to say what is wrong with the address (nothing listens, no such host, no answer).
"""

from __future__ import annotations

from urllib.parse import urlsplit

import requests
import urllib3

REFUSED, UNRESOLVED, TIMED_OUT = "connection refused", "cannot resolve the host name", "timed out"


def transport_reason(exc: Exception) -> str:
    """A library's exception as a few words (its text can run to hundreds of characters of pool internals)."""
    if isinstance(exc, requests.Timeout):
        return TIMED_OUT
    if isinstance(exc, requests.ConnectionError):
        text = str(exc).lower()
        if "reset" in text:
            return "connection reset"
        if "refused" in text:
            return REFUSED
        if "resolve" in text or "name or service not known" in text or "nodename nor servname" in text:
            return UNRESOLVED
        if "timed out" in text:
            return TIMED_OUT
        return "connection failed" if "max retries" in text else f"connection error ({str(exc)[:200]})"
    if isinstance(exc, (requests.exceptions.ChunkedEncodingError, urllib3.exceptions.ProtocolError)):
        return "answer truncated" if "IncompleteRead" in repr(exc) or "ncomplete" in str(exc) else f"connection broken ({str(exc)[:200]})"
    if isinstance(exc, requests.exceptions.ContentDecodingError):
        return "compressed answer is corrupt or truncated"
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def unreachable_problem(url: str, message: str) -> str | None:
    """What an error ``message`` (with a :func:`transport_reason` in it) says about the address ``url``: nothing
    listens there, the host does not resolve, or it did not answer in time; None when it says none of these."""
    parts = urlsplit(url)
    address = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
    if REFUSED in message:
        return f"{address} refuses connections (nothing listens there)"
    if UNRESOLVED in message:
        return f"the host name {parts.hostname} does not resolve"
    if TIMED_OUT in message:
        return f"{address} did not answer in time"
    return None
