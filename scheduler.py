"""Background jobs: each feed built on its schedule and after MoySklad webhooks.

Exactly one process per data directory runs them: the one holding an flock on
``<data_dir>/scheduler.lock`` (which names its pid). The others (the other gunicorn workers) try
again every 30 s, so when the owner dies another worker takes over. Builds run one at a time on
a single thread: they share the store's lock and the MoySklad request budget.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import IO

from apscheduler.events import EVENT_SCHEDULER_SHUTDOWN
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from feeds.build import BuildFailed, build_feed
from moysklad.errors import MoySkladError
from settings import FeedSettings, Settings
from store import StoreError
from webhooks import pending_rebuild, take_rebuild_request, write_note

log = logging.getLogger(__name__)

LOCK_FILE = "scheduler.lock"
BUILD_REQUESTS = "build-requests"  # notes from the health page's "build now" button, one per feed
LOCK_RETRY_SECONDS = 30.0
WEBHOOK_POLL_SECONDS = 2.0
MISFIRE_GRACE_SECONDS = 3600  # a run missed by up to an hour (a stalled process, a suspend) still happens, once
MAX_DEBOUNCE_FACTOR = 5  # a steady stream of webhooks still rebuilds after this many debounce periods
CRONTAB_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # crontab's numbering
WEEKDAY_PART = re.compile(r"(?:(\*)|(\w+)(?:-(\w+))?)(?:/(\d+))?")


def start_scheduler(app, *, retry_seconds: float | None = LOCK_RETRY_SECONDS) -> BackgroundScheduler | None:
    """Run the jobs here unless another process does; then wait in the background to take over."""
    settings: Settings = app.config["SETTINGS"]
    lock = _acquire_lock(settings)
    if lock is not None:
        return _run_jobs(app, settings, lock)
    log.info("process %d leaves the scheduler to process %s (holder of %s)", os.getpid(),
             _lock_holder(settings), settings.data_dir / LOCK_FILE)
    if retry_seconds:
        threading.Thread(target=_take_over_when_free, args=(app, settings, retry_seconds),
                         name="scheduler-takeover", daemon=True).start()
    return None


def _take_over_when_free(app, settings: Settings, retry_seconds: float) -> None:
    """Retry the lock until its holder exits (a gunicorn worker killed or recycled), then run the jobs."""
    while True:
        time.sleep(retry_seconds)
        lock = _acquire_lock(settings)
        if lock is not None:
            log.info("process %d takes over the scheduler", os.getpid())
            _run_jobs(app, settings, lock)
            return


def _acquire_lock(settings: Settings, note_pid: bool = True) -> IO | None:
    """The scheduler lock, held for as long as the returned file stays open; None when taken."""
    handle = open(settings.data_dir / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    if not note_pid:
        return handle
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def scheduler_running(settings: Settings) -> bool:
    """Whether some process holds the scheduler lock (tried, never kept, from any process)."""
    lock = _acquire_lock(settings, note_pid=False)
    if lock is None:
        return True
    _release(lock)
    return False


def _lock_holder(settings: Settings) -> str:
    """The pid written by the process that holds the lock, for the operator."""
    try:
        return (settings.data_dir / LOCK_FILE).read_text().strip() or "unknown"
    except OSError:
        return "unknown"


def _run_jobs(app, settings: Settings, lock: IO) -> BackgroundScheduler:
    """Schedule every feed (first build at once) and the webhook poll; shutting down frees the lock."""
    for name in ("apscheduler.executors", "apscheduler.scheduler"):
        logging.getLogger(name).setLevel(logging.WARNING)  # our one line per build is enough
    accounts = settings.every_account()
    scheduler = BackgroundScheduler(
        executors={"default": ThreadPoolExecutor(1), **{builds_executor(a): ThreadPoolExecutor(1) for a in accounts}},
        job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": MISFIRE_GRACE_SECONDS},
    )
    now = dt.datetime.now(dt.timezone.utc)
    plan = []
    for account in accounts:
        for feed in account.feeds:
            scheduler.add_job(run_build, _trigger(feed), args=[account, feed], id=f"feed:{feed.name}",
                              name=f"build feed {feed.name}", executor=builds_executor(account), next_run_time=now)
            plan.append(_describe(feed))
        if account.webhooks.secret and account.moysklad_feeds:
            poller = RebuildPoller(scheduler, account)
            scheduler.add_job(poller.poll, "interval", seconds=WEBHOOK_POLL_SECONDS, id=f"webhook-poll:{account.account}",
                              name=f"poll webhook rebuild requests {account.account}".rstrip())
            plan.append(f"webhook rebuilds{' of ' + account.account if account.account else ''} after "
                        f"{settings.webhooks.debounce_seconds} s without changes")
    requests = ManualBuilds(scheduler, settings)
    scheduler.add_job(requests.poll, "interval", seconds=WEBHOOK_POLL_SECONDS, id="manual-build-poll",
                      name="poll build requests from the health page")
    scheduler.add_listener(lambda event: _release(lock), EVENT_SCHEDULER_SHUTDOWN)
    scheduler.start()
    app.extensions["scheduler"] = scheduler
    log.info("scheduler started in process %d: %s", os.getpid(), "; ".join(plan) or "no feeds")
    return scheduler


def builds_executor(account: Settings) -> str:
    """Each account builds on a thread of its own: a slow or failing client never delays another.
    Within an account builds run one at a time: they share its store and its MoySklad budget."""
    return f"builds:{account.account or 'main'}"


def _release(lock: IO) -> None:
    """Let another process take the jobs over once this scheduler is shut down."""
    fcntl.flock(lock, fcntl.LOCK_UN)
    lock.close()


def _trigger(feed: FeedSettings):
    """The feed's crontab (in the server's local time) when set, else its interval."""
    if feed.cron:
        return crontab_trigger(feed.cron)
    return IntervalTrigger(minutes=feed.interval_minutes)


def crontab_trigger(expr: str) -> CronTrigger:
    """A crontab expression read as cron does: APScheduler 3's from_crontab takes weekday 0 for Monday."""
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"{expr!r}: expected 5 fields (minute hour day month weekday), got {len(fields)}")
    minute, hour, day, month, weekdays = fields
    return CronTrigger(minute=minute, hour=hour, day=day, month=month, day_of_week=_crontab_weekdays(weekdays))


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


def _describe(feed: FeedSettings) -> str:
    """The feed's schedule, for the start-up log line."""
    return f"feed {feed.name} cron '{feed.cron}'" if feed.cron else f"feed {feed.name} every {feed.interval_minutes:g} min"


def run_build(settings: Settings, feed: FeedSettings, sync: bool = True, force: bool = False) -> None:
    """One build, logged in one line; a failure leaves the previous file published and is never raised."""
    started = time.monotonic()
    try:
        result = build_feed(settings, feed, sync=sync, force=force)
    except (BuildFailed, MoySkladError, StoreError) as exc:
        log.error("feed %s: build failed in %.1f s, the previous file stays published: %s",
                  feed.name, time.monotonic() - started, exc)
    except Exception:  # a bug must not stop the other feeds' builds
        log.exception("feed %s: build crashed in %.1f s, the previous file stays published",
                      feed.name, time.monotonic() - started)
    else:
        log.info("feed %s: build #%d published in %.1f s, %d offers", feed.name, result.run_id,
                 result.seconds, result.offers)


class RebuildPoller:
    """Turns webhook rebuild requests (left by any worker) into one build of the moysklad feeds."""

    def __init__(self, scheduler: BackgroundScheduler, settings: Settings):
        self.scheduler = scheduler
        self.settings = settings
        self.debounce = settings.webhooks.debounce_seconds
        self.first_seen: float | None = None
        self.queued = threading.Event()  # a rebuild waits for the build thread; later requests join it

    def poll(self) -> None:
        """Queue a rebuild once requests stopped for the debounce time, or have kept coming too long."""
        latest = pending_rebuild(self.settings.data_dir)
        if latest is None:
            return
        now = time.time()
        self.first_seen = self.first_seen or latest
        if now - latest < self.debounce and now - self.first_seen < MAX_DEBOUNCE_FACTOR * self.debounce:
            return
        take_rebuild_request(self.settings.data_dir)
        self.first_seen = None
        if self.queued.is_set():
            return
        self.queued.set()
        self.scheduler.add_job(self.rebuild, executor=builds_executor(self.settings), id=f"webhook-rebuild:{self.settings.account}",
                               name="webhook rebuild",
                               max_instances=2, misfire_grace_time=None)  # one running, one waiting

    def rebuild(self) -> None:
        """Build every moysklad feed; the first build's incremental sync serves them all."""
        self.queued.clear()
        for index, feed in enumerate(self.settings.moysklad_feeds):
            run_build(self.settings, feed, sync=index == 0)


# --- builds asked for on the health page -------------------------------------------------------------

def request_build(settings: Settings, feed: FeedSettings, *, force: bool = False) -> None:
    """Leave a note for the scheduler process (any worker may get the click; only one runs builds)."""
    note = _build_note(settings, feed.name)
    note.parent.mkdir(parents=True, exist_ok=True)
    write_note(note, json.dumps({"force": force, "requested_at": time.time()}))


def build_requests(settings: Settings) -> dict[str, dict]:
    """Builds asked for and not yet started, by feed name (notes of every account's feeds sit in the
    main data directory: feed names are unique)."""
    requests = {}
    for _, feed in settings.every_feed():
        try:
            requests[feed.name] = json.loads(_build_note(settings, feed.name).read_text())
        except (OSError, ValueError):
            continue
    return requests


def _build_note(settings: Settings, feed_name: str) -> Path:
    return settings.data_dir / BUILD_REQUESTS / f"{feed_name}.json"


class ManualBuilds:
    """Turns the health page's build requests into builds on the scheduler's build thread."""

    def __init__(self, scheduler: BackgroundScheduler, settings: Settings):
        self.scheduler = scheduler
        self.settings = settings
        self.queued: set[str] = set()  # feeds whose requested build waits for the build thread
        self.lock = threading.Lock()

    def poll(self) -> None:
        for name, request in build_requests(self.settings).items():
            with self.lock:
                if name in self.queued:
                    continue
                self.queued.add(name)
            account, feed = self.settings.find_feed(name)
            self.scheduler.add_job(self._build, args=[account, feed, bool(request.get("force"))],
                                   executor=builds_executor(account),
                                   id=f"manual:{name}", name=f"build feed {name} (asked for on the health page)",
                                   misfire_grace_time=None)

    def _build(self, account: Settings, feed: FeedSettings, force: bool) -> None:
        """The note stays until the build starts, so the page shows the request as waiting until then."""
        with self.lock:
            self.queued.discard(feed.name)
        _build_note(self.settings, feed.name).unlink(missing_ok=True)
        log.info("feed %s: build asked for on the health page%s", feed.name, " (forced past the guard)" if force else "")
        run_build(account, feed, force=force)
