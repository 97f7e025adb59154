"""Times as the store records them (UTC) and as MoySklad writes them (Moscow time without a zone)."""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os

log = logging.getLogger(__name__)

MOSCOW = dt.timezone(dt.timedelta(hours=3), "MSK")


def utc_now() -> str:
    """Now in UTC as the store writes times: ISO, to the second; such texts compare in time order."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def moscow_now() -> dt.datetime:
    """Now on a Moscow wall clock without a zone: the time 1C and MoySklad write and read."""
    return dt.datetime.now(MOSCOW).replace(tzinfo=None)


@functools.cache
def local_zone() -> dt.tzinfo:
    """The server's time zone, which crontab schedules follow: the zone TZ or /etc/localtime names (its summer time
    included), else the offset the C library reads now (a POSIX TZ such as "MSK-3", which tzlocal refuses and
    APScheduler took down every worker with)."""
    import tzlocal  # APScheduler's own way to the local zone, installed with it

    try:
        return tzlocal.get_localzone()
    except LookupError:  # zoneinfo.ZoneInfoNotFoundError
        now = dt.datetime.now().astimezone()
        log.warning("the server's time zone (TZ=%s) is not a zone name: schedules follow its offset now, UTC%s; "
                    "set TZ to a name such as Europe/Moscow", os.environ.get("TZ", ""), now.strftime("%z"))
        return now.tzinfo
