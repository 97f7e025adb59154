"""Crontab expressions read as cron reads them, for the scheduler, the config check and the health page."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
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
    are restricted (neither starts with ``*``). With ``jitter`` each run comes up to that many seconds after its time,
    at most a quarter of the shortest gap between the schedule's runs (an every-minute schedule would otherwise drift
    by whole runs)."""
    from apscheduler.triggers.combining import OrTrigger  # APScheduler loads when a config has a cron, not at start-up
    from apscheduler.triggers.cron import CronTrigger

    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"{expr!r}: expected 5 fields (minute hour day month weekday), got {len(fields)}")
    minute, hour, day, month, weekdays = fields
    on_days = partial(CronTrigger, minute=minute, hour=hour, month=month, timezone=local_zone())
    if day.startswith("*") or weekdays.startswith("*"):
        trigger = on_days(day=day, day_of_week=_crontab_weekdays(weekdays))
    else:
        trigger = OrTrigger([on_days(day=day), on_days(day_of_week=_crontab_weekdays(weekdays))])
    if jitter:
        trigger.jitter = min(jitter, _shortest_gap(trigger) / 4)
    return trigger


def _shortest_gap(trigger: BaseTrigger, runs: int = 8) -> float:
    """Seconds between the closest two of the schedule's next runs (a day when it has fewer than two)."""
    moment = datetime.now(timezone.utc)
    times = []
    for _ in range(runs):
        moment = trigger.get_next_fire_time(None, moment)
        if moment is None:
            break
        times.append(moment)
        moment += timedelta(seconds=1)
    return min(((later - earlier).total_seconds() for earlier, later in zip(times, times[1:])), default=86400.0)


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
