"""Times as the store records them (UTC) and as MoySklad writes them (Moscow time without a zone)."""

from __future__ import annotations

import datetime as dt

MOSCOW = dt.timezone(dt.timedelta(hours=3), "MSK")


def utc_now() -> str:
    """Now in UTC as the store writes times: ISO, to the second; such texts compare in time order."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def moscow_now() -> dt.datetime:
    """Now on a Moscow wall clock without a zone: the time 1C and MoySklad write and read."""
    return dt.datetime.now(MOSCOW).replace(tzinfo=None)
