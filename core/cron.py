"""Crontab expressions read as cron reads them, for the scheduler, the config check and the health page."""

from __future__ import annotations

import re
from functools import partial
from typing import TYPE_CHECKING

from core.clock import local_zone

if TYPE_CHECKING:
    from apscheduler.triggers.base import BaseTrigger

CRONTAB_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # crontab's numbering
WEEKDAY_PART = re.compile(r"(?:(\*)|(\w+)(?:-(\w+))?)(?:/(\d+))?")


def crontab_trigger(expr: str, jitter: float | None = None) -> BaseTrigger:
    """A crontab expression read as cron does: APScheduler 3's from_crontab takes weekday 0 for Monday, and
    wants both the day of month and the weekday to match where cron runs on a day matching either when both
    are restricted (neither starts with ``*``). With ``jitter`` each run comes up to that many seconds after its time."""
    from apscheduler.triggers.combining import OrTrigger  # APScheduler loads when a config has a cron, not at start-up
    from apscheduler.triggers.cron import CronTrigger

    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"{expr!r}: expected 5 fields (minute hour day month weekday), got {len(fields)}")
    minute, hour, day, month, weekdays = fields
    on_days = partial(CronTrigger, minute=minute, hour=hour, month=month, timezone=local_zone())
    if day.startswith("*") or weekdays.startswith("*"):
        return on_days(day=day, day_of_week=_crontab_weekdays(weekdays), jitter=jitter)
    return OrTrigger([on_days(day=day), on_days(day_of_week=_crontab_weekdays(weekdays))], jitter=jitter)


def _crontab_weekdays(field: str) -> str:
    """Crontab's weekday field (0 or 7 = Sunday, names, ranges, steps) as day names APScheduler reads alike."""
    if field == "*":
        return field
    days = set()
    for part in field.split(","):
        match = WEEKDAY_PART.fullmatch(part)
        if not match:
            raise ValueError(f"weekday {field!r}: cannot read {part!r}")
        every, first, last, step = match.groups()
        low = 0 if every else _weekday_number(first)
        high = _weekday_number(last) if last else 6 if every or step else low
        if low > high:
            raise ValueError(f"weekday {field!r}: the range {part!r} runs backwards")
        days |= {number % 7 for number in range(low, high + 1, int(step or 1))}
    return ",".join(CRONTAB_WEEKDAYS[number] for number in sorted(days))


def _weekday_number(text: str) -> int:
    """0-7 (0 and 7 are Sunday) or a three-letter English name."""
    if text.isdigit() and int(text) <= 7:
        return int(text)
    if text.lower() in CRONTAB_WEEKDAYS:
        return CRONTAB_WEEKDAYS.index(text.lower())
    raise ValueError(f"weekday {text!r}: use 0-7 or sun..sat")
