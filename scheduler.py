"""Background jobs: each feed built on its schedule and when asked through the mailbox.

Exactly one process per data directory runs them: the one holding the mailbox's reader lock
(``<data_dir>/scheduler.lock``, which names its pid). The others (the other gunicorn workers) try
again every 30 s, so when the owner dies another worker takes over. APScheduler decides when a
feed is due (each feed in a phase of its own, so hundreds do not fall due in the same second); it
only queues the build in one bounded pool (:mod:`core.build_pool`), which runs at most
``max_concurrent_builds`` at once, one per account (an account's builds share its store's lock and
its MoySklad budget), asked-for work before scheduled builds and accounts in turn.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
import zlib
from functools import partial
from typing import IO

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from core.build_pool import QUEUE_FILE, SCHEDULED, BuildPool
from core.clock import local_zone
from core.cron import crontab_trigger
from core.files import lock_holder, release
from core.mailbox import BUILD, EXCHANGE, REBUILD, STOCK, Mailbox, Note, join_stock
from core.settings import FeedSettings, Settings
from exchange.sessions import prune_sessions
from feeds.build import BuildFailed, build_feed
from feeds.publish import failure_outcome
from moysklad.connect import open_client
from moysklad.errors import MoySkladError
from moysklad.stock import apply_stock_changes
from retailcrm.errors import RetailCrmError
from retailcrm.push import MappingError, push_feed
from store import ExchangeLog, StoreError, open_catalog

log = logging.getLogger(__name__)

LOCK_RETRY_SECONDS = 30.0
MAILBOX_POLL_SECONDS = 2.0
SWEEP_SECONDS = 300
# A run missed however long ago (a stalled process, a suspended machine, the clock set forward) still happens, once
# (coalesce): a daily feed whose time passed during a suspend is built on resume, not skipped until the next day.
MISFIRE_GRACE_SECONDS = None
MAX_DEBOUNCE_FACTOR = 5  # a steady stream of webhooks still rebuilds after this many debounce periods
# After a 1C import the exchange feeds are rebuilt once the exchange has sent nothing for this long (every
# catalog request of a session puts the rebuild off: one full catalog may come as several files, and a
# feed built between two of them would show the later files' goods as removed); mode=complete rebuilds at once.
EXCHANGE_QUIET_SECONDS = 10
EXCHANGE_LONGEST_WAIT_SECONDS = 30 * 60  # an exchange that never stops sending still has its feeds rebuilt this often
# A cron feed's run comes up to this long after its time, so feeds on the same crontab do not all fall due at once.
CRON_JITTER_SECONDS = 60


def start_scheduler(app, *, retry_seconds: float | None = LOCK_RETRY_SECONDS) -> BackgroundScheduler | None:
    """Run the jobs here unless another process does; then wait in the background to take over."""
    settings: Settings = app.config["SETTINGS"]
    stopping = _stopping(app)
    lock = settings.mailbox.claim_reader()
    if lock is not None:
        return _run_jobs(app, settings, lock)
    log.info("process %d leaves the scheduler to process %s (holder of %s)", os.getpid(),
             lock_holder(settings.mailbox.lock_path), settings.mailbox.lock_path)
    if retry_seconds:
        threading.Thread(target=_take_over_when_free, args=(app, settings, retry_seconds, stopping),
                         name="scheduler-takeover", daemon=True).start()
    return None


def _take_over_when_free(app, settings: Settings, retry_seconds: float, stopping: threading.Event) -> None:
    """Retry the lock until its holder exits (a gunicorn worker killed or recycled), then run the jobs; never once
    this process is stopping."""
    while not stopping.wait(retry_seconds):
        with _STARTING:
            if stopping.is_set():
                return
            lock = settings.mailbox.claim_reader()
            if lock is not None:
                log.info("process %d takes over the scheduler", os.getpid())
                _run_jobs(app, settings, lock)
                return


_STARTING = threading.Lock()  # a takeover starting the scheduler, or the process stopping it: one at a time


def _stopping(app) -> threading.Event:
    """Set once the process stops: a scheduler that would take over from now on does not."""
    return app.extensions.setdefault("scheduler_stopping", threading.Event())


def stop_scheduler(app) -> None:
    """The process is exiting (a gunicorn worker stopped, restarted or reloaded): it takes nothing over from now
    on, and when it runs the scheduler, nothing more is queued, the work still waiting is asked for again in the
    mailbox (the next scheduler does it), the running builds end, and the lock is freed. Left to the interpreter's
    exit instead, the scheduler kept firing into stopped thread pools (a traceback every 2 s while a build ran)
    and the waiting work (a webhook's full rebuild after a deletion) was lost."""
    with _STARTING:
        _stopping(app).set()
        running = app.extensions.get("scheduler")
    if running is not None and running.running:
        log.info("process %d stops the scheduler: the running builds finish first", os.getpid())
        running.shutdown(wait=True)


class BuildScheduler(BackgroundScheduler):
    """APScheduler for the *when*, the build pool for the work; shutting down stops both, then frees the lock."""

    def __init__(self, pool: BuildPool, lock: IO, **options):
        super().__init__(**options)
        self.pool = pool
        self.lock = lock

    def shutdown(self, wait: bool = True) -> None:
        super().shutdown(wait=wait)
        self.pool.shutdown(wait=wait)
        release(self.lock)


def _run_jobs(app, settings: Settings, lock: IO) -> BackgroundScheduler:
    """Schedule every feed, queue its first build at once, poll the mailbox; shutting down frees the lock."""
    for name in ("apscheduler.executors", "apscheduler.scheduler"):
        logging.getLogger(name).setLevel(logging.WARNING)  # our one line per build is enough
    accounts = settings.every_account()
    pool = BuildPool(settings.build_pool_size, settings.instance_dir / QUEUE_FILE)
    scheduler = BuildScheduler(
        pool, lock, timezone=local_zone(), executors={"default": ThreadPoolExecutor(1)},  # its jobs only queue work: quick
        job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": MISFIRE_GRACE_SECONDS},
    )
    now = dt.datetime.now(dt.timezone.utc)
    plan = [f"{pool.size} builds at once"]
    for account in accounts:
        for feed in account.feeds:
            scheduler.add_job(queue_build, _trigger(feed, now), args=[pool, account, feed], id=f"feed:{feed.name}",
                              name=f"build feed {feed.name}")
            plan.append(_describe(feed))
        if account.webhooks.secret and account.moysklad_feeds:
            plan.append(f"webhook rebuilds{' of ' + account.account if account.account else ''} after "
                        f"{settings.webhooks.debounce_seconds} s without changes")
    poller = MailboxPoller(pool, settings)
    scheduler.add_job(poller.poll, "interval", seconds=MAILBOX_POLL_SECONDS, id="mailbox-poll",
                      name="poll the mailbox (webhooks, the build button)")
    if settings.exchange.password:
        scheduler.add_job(sweep_exchange_sessions, "interval", args=[settings], seconds=SWEEP_SECONDS,
                          id="exchange-sweep", name="sweep expired exchange sessions")
    scheduler.start()
    pool.next_runs = partial(_next_runs, scheduler)
    for account in accounts:  # every feed's first build at once: published as soon as the pool gets to it
        for feed in account.feeds:
            queue_build(pool, account, feed)
    app.extensions["scheduler"] = scheduler
    log.info("scheduler started in process %d: %s", os.getpid(), "; ".join(plan))
    return scheduler


def _next_runs(scheduler: BackgroundScheduler) -> dict[str, float]:
    """Each feed's next scheduled build (Unix time) as APScheduler has it, phase and jitter included."""
    return {job.id.removeprefix("feed:"): job.next_run_time.timestamp() for job in scheduler.get_jobs()
            if job.id.startswith("feed:") and job.next_run_time}


def queue_build(pool: BuildPool, account: Settings, feed: FeedSettings) -> None:
    """A feed is due: its build waits in the pool (once, however often it falls due meanwhile)."""
    pool.submit(account.account, SCHEDULED, feed.name, partial(run_build, account, feed))


def sweep_exchange_sessions(settings: Settings) -> None:
    """Expired 1C sessions are logged and their uploads removed even when no 1C logs in again."""
    with ExchangeLog(settings.exchange_log_path) as log_store:
        pruned = prune_sessions(log_store, settings.exchange_dir, settings.exchange.session_minutes)
    if pruned:
        log.info("exchange: %d expired sessions swept", pruned)


def _trigger(feed: FeedSettings, now: dt.datetime):
    """The feed's crontab (in the server's local time, each run up to a minute late), else its interval in
    a phase of its own: the first run after the start-up build comes 0.5 to 1.5 intervals later, at a
    point fixed by the feed's name, so the feeds' runs spread evenly over the interval and stay spread."""
    if feed.cron:
        return crontab_trigger(feed.cron, jitter=CRON_JITTER_SECONDS)
    interval = feed.interval_minutes * 60
    phase = zlib.crc32(feed.name.encode("utf-8")) / 2 ** 32
    return IntervalTrigger(seconds=interval, start_date=now + dt.timedelta(seconds=interval * (0.5 + phase)))


def _describe(feed: FeedSettings) -> str:
    """The feed's schedule, for the start-up log line."""
    return f"feed {feed.name} cron '{feed.cron}'" if feed.cron else f"feed {feed.name} every {feed.interval_minutes:g} min"


def run_build(settings: Settings, feed: FeedSettings, sync: bool = True, force: bool = False,
              full_sync: bool = False) -> None:
    """One build, logged in one line; a failure leaves the previous file published and is never raised."""
    started = time.monotonic()
    push = (lambda published: run_push(settings, feed)) if feed.retailcrm is not None else None
    try:
        result = build_feed(settings, feed, sync=sync, force=force, full_sync=full_sync, on_published=push)
    except (BuildFailed, MoySkladError, StoreError) as exc:
        log.error("feed %s: build failed in %.1f s, %s: %s",
                  feed.name, time.monotonic() - started, failure_outcome(settings.feeds_dir, feed.name), exc)
    except Exception:  # a bug must not stop the other feeds' builds
        log.exception("feed %s: build crashed in %.1f s, %s",
                      feed.name, time.monotonic() - started, failure_outcome(settings.feeds_dir, feed.name))
    else:
        log.info("feed %s: build #%d published in %.1f s, %d offers%s", feed.name, result.number,
                 result.seconds, result.offers,
                 f"; build #{result.with_pictures.number} added the new pictures" if result.with_pictures else "")


def run_push(settings: Settings, feed: FeedSettings, offer_ids: list[str] | None = None,
             received_at: float | None = None) -> None:
    """Push what changed to retailCRM; a failure is recorded and logged, never raised (the next push catches up)."""
    try:
        push_feed(settings, feed, offer_ids=offer_ids, received_at=received_at)
    except (RetailCrmError, MappingError, StoreError) as exc:
        log.error("feed %s: retailCRM push failed, the next push sends what is missing: %s", feed.name, exc)
    except Exception:  # a bug must not stop the builds
        log.exception("feed %s: retailCRM push crashed, the next push sends what is missing", feed.name)


def run_stock_update(settings: Settings, request: dict) -> None:
    """A stock webhook's fast path: the changed stock into the store, then pushed to retailCRM (no sync, no render)."""
    try:
        with open_client(settings.moysklad) as client, open_catalog(settings.store_path) as store:
            update = apply_stock_changes(client, store, request.get("changed_since"))
    except (MoySkladError, StoreError) as exc:
        log.error("stock webhook%s: reading the changed stock failed, the next webhook or build catches up: %s",
                  f" of {settings.account}" if settings.account else "", exc)
        return
    except Exception:
        log.exception("stock webhook: reading the changed stock crashed")
        return
    if update.offer_ids == []:
        return
    for feed in settings.moysklad_feeds:
        if feed.retailcrm is not None:
            run_push(settings, feed, offer_ids=update.offer_ids, received_at=request.get("received_at"))


class MailboxPoller:
    """Turns the notes any process leaves into work in the build pool, ahead of the scheduled builds.

    A ``rebuild`` note (MoySklad webhooks) waits until the webhooks have been quiet for the
    debounce time, then rebuilds the account's moysklad feeds once; an ``exchange`` note (a 1C
    import) does the same for the exchange feeds; a ``build`` note (the health page's button)
    builds its feed; a ``stock`` note (a stock webhook, for feeds that push to retailCRM) reads the
    changed stock and pushes it, without waiting. Each runs once its account runs nothing else.
    """

    def __init__(self, pool: BuildPool, settings: Settings):
        self.pool = pool
        self.settings = settings
        self.mailbox: Mailbox = settings.mailbox
        self.accounts = {view.account: view for view in settings.every_account()}
        self.first_seen: dict[tuple[str, str], float] = {}  # (kind, key) → when its current burst of notes began
        self.stock_waiting: dict[str, dict] = {}  # account → the stock request its next stock work takes
        self.lock = threading.Lock()

    def poll(self) -> None:
        for note in self.mailbox.notes():
            if note.kind == REBUILD:
                account = self.accounts.get(note.key)
                quiet = self.settings.webhooks.debounce_seconds
                named = note.payload.get("feeds")  # None: a note of an earlier version, for every feed
                feeds = tuple(feed for feed in account.moysklad_feeds if named is None or feed.name in named) if account else ()
                self._rebuild(note, account, feeds, quiet, MAX_DEBOUNCE_FACTOR * quiet, full=bool(note.payload.get("full")))
            elif note.kind == EXCHANGE:
                quiet = 0 if note.payload.get("urgent") else EXCHANGE_QUIET_SECONDS
                exchange_feeds = tuple(feed for feed in self.settings.feeds if feed.source == "exchange")
                self._rebuild(note, self.settings, exchange_feeds, quiet, EXCHANGE_LONGEST_WAIT_SECONDS)
            elif note.kind == BUILD:
                self._build(note)
            elif note.kind == STOCK:
                self._stock(note)

    def _rebuild(self, note: Note, account: Settings | None, feeds: tuple[FeedSettings, ...], quiet: float,
                 longest: float, full: bool = False) -> None:
        """Queue one rebuild of ``feeds`` (after a full sync when ``full``) once requests stopped for ``quiet``
        seconds, or have kept coming for ``longest``; the same rebuild already waiting in the pool will see these
        changes too."""
        if account is None or not feeds:
            self.mailbox.take(note)
            return
        now, burst = time.time(), (note.kind, note.key)
        first = self.first_seen.setdefault(burst, note.posted_at)
        # a note from the future was written before the clock was set back: due now, not once the clock is there again
        if 0 <= now - note.posted_at < quiet and 0 <= now - first < longest:
            return
        if not self.mailbox.take(note):  # asked for again just now: the next poll sees the joined request
            return
        del self.first_seen[burst]
        names = tuple(feed.name for feed in feeds)
        self.pool.submit(account.account, note.kind, ",".join(names) + (" full" if full else ""),
                         partial(self._run_rebuild, account, feeds, full), feeds=names,
                         on_drop=partial(self._ask_again, note.kind, note.key, note.payload))

    @staticmethod
    def _run_rebuild(account: Settings, feeds: tuple[FeedSettings, ...], full: bool = False) -> None:
        """Build each feed; for moysklad feeds the first build's sync (full when ``full``) serves them all."""
        for index, feed in enumerate(feeds):
            run_build(account, feed, sync=index == 0, full_sync=full and index == 0)

    def _stock(self, note: Note) -> None:
        """A stock webhook: at once (no debounce), after what its account runs now; requests arriving
        meanwhile join the one waiting."""
        if not self.mailbox.take(note):  # asked for again just now: the next poll sees the joined request
            return
        account = self.accounts.get(note.key)
        pushing = tuple(feed.name for feed in account.moysklad_feeds if feed.retailcrm) if account else ()
        if not pushing:
            return
        with self.lock:
            waiting = self.stock_waiting.get(note.key)
            self.stock_waiting[note.key] = join_stock(waiting or {}, note.payload)
            if waiting is not None:
                return
        self.pool.submit(account.account, STOCK, "", partial(self._run_stock, account), feeds=pushing,
                         on_drop=partial(self._stock_dropped, account.account))

    def _run_stock(self, account: Settings) -> None:
        with self.lock:
            request = self.stock_waiting.pop(account.account)
        run_stock_update(account, request)

    def _stock_dropped(self, key: str) -> None:
        """A shutdown dropped the stock work before it ran: its request waits in the mailbox for the next scheduler."""
        with self.lock:
            request = self.stock_waiting.pop(key, None)
        if request is not None:
            self._ask_again(STOCK, key, request)

    def _ask_again(self, kind: str, key: str, payload: dict) -> None:
        """Put back the note of work a shutdown dropped (the notes were taken when it was queued), joined with one
        that came meanwhile, so the next scheduler does it."""
        self.mailbox.post(kind, key, **{k: v for k, v in payload.items() if k != "posted_at"})

    def _build(self, note: Note) -> None:
        """The note stays until the build starts, so the page shows the request as waiting until then."""
        found = self.settings.find_feed(note.key)
        if found is None:
            self.mailbox.take(note)
            return
        account, feed = found
        self.pool.submit(account.account, BUILD, feed.name, partial(self._run_build, account, feed))

    def _run_build(self, account: Settings, feed: FeedSettings) -> None:
        note = self.mailbox.note(BUILD, feed.name)  # the latest click: it may have asked to force the guard
        if note is not None:
            self.mailbox.take(note)
        force = bool(note and note.payload.get("force"))
        log.info("feed %s: build asked for on the health page%s", feed.name, " (forced past the guard)" if force else "")
        run_build(account, feed, force=force)
