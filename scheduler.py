"""Background jobs: each feed built on its schedule and when asked through the mailbox.

Exactly one process per data directory runs them: the one holding the mailbox's reader lock
(``<data_dir>/scheduler.lock``, which names its pid). The others (the other gunicorn workers) try
again every 30 s, so when the owner dies another worker takes over. Within an account builds run
one at a time on a thread of the account's: they share its store's lock and its MoySklad budget.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from typing import IO

from apscheduler.events import EVENT_SCHEDULER_SHUTDOWN
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from core.cron import crontab_trigger
from core.files import lock_holder, release
from core.mailbox import BUILD, EXCHANGE, REBUILD, STOCK, Mailbox, Note
from core.settings import FeedSettings, Settings
from exchange.sessions import prune_sessions
from feeds.build import BuildFailed, build_feed
from feeds.publish import failure_outcome
from moysklad.connect import open_client
from moysklad.errors import MoySkladError
from moysklad.stock import apply_stock_changes, merge_requests
from retailcrm.errors import RetailCrmError
from retailcrm.push import MappingError, push_feed
from store import ExchangeLog, StoreError, open_catalog

log = logging.getLogger(__name__)

LOCK_RETRY_SECONDS = 30.0
MAILBOX_POLL_SECONDS = 2.0
SWEEP_SECONDS = 300
MISFIRE_GRACE_SECONDS = 3600  # a run missed by up to an hour (a stalled process, a suspend) still happens, once
MAX_DEBOUNCE_FACTOR = 5  # a steady stream of webhooks still rebuilds after this many debounce periods
# After a 1C import the exchange feeds are rebuilt once the exchange has been quiet this long (its next
# file usually follows within seconds); mode=complete rebuilds at once.
EXCHANGE_QUIET_SECONDS = 10


def start_scheduler(app, *, retry_seconds: float | None = LOCK_RETRY_SECONDS) -> BackgroundScheduler | None:
    """Run the jobs here unless another process does; then wait in the background to take over."""
    settings: Settings = app.config["SETTINGS"]
    lock = settings.mailbox.claim_reader()
    if lock is not None:
        return _run_jobs(app, settings, lock)
    log.info("process %d leaves the scheduler to process %s (holder of %s)", os.getpid(),
             lock_holder(settings.mailbox.lock_path), settings.mailbox.lock_path)
    if retry_seconds:
        threading.Thread(target=_take_over_when_free, args=(app, settings, retry_seconds),
                         name="scheduler-takeover", daemon=True).start()
    return None


def _take_over_when_free(app, settings: Settings, retry_seconds: float) -> None:
    """Retry the lock until its holder exits (a gunicorn worker killed or recycled), then run the jobs."""
    while True:
        time.sleep(retry_seconds)
        lock = settings.mailbox.claim_reader()
        if lock is not None:
            log.info("process %d takes over the scheduler", os.getpid())
            _run_jobs(app, settings, lock)
            return


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
            plan.append(f"webhook rebuilds{' of ' + account.account if account.account else ''} after "
                        f"{settings.webhooks.debounce_seconds} s without changes")
    poller = MailboxPoller(scheduler, settings)
    scheduler.add_job(poller.poll, "interval", seconds=MAILBOX_POLL_SECONDS, id="mailbox-poll",
                      name="poll the mailbox (webhooks, the build button)")
    if settings.exchange.password:
        scheduler.add_job(sweep_exchange_sessions, "interval", args=[settings], seconds=SWEEP_SECONDS,
                          id="exchange-sweep", name="sweep expired exchange sessions")
    scheduler.add_listener(lambda event: release(lock), EVENT_SCHEDULER_SHUTDOWN)
    scheduler.start()
    app.extensions["scheduler"] = scheduler
    log.info("scheduler started in process %d: %s", os.getpid(), "; ".join(plan) or "no feeds")
    return scheduler


def sweep_exchange_sessions(settings: Settings) -> None:
    """Expired 1C sessions are logged and their uploads removed even when no 1C logs in again."""
    with ExchangeLog(settings.exchange_log_path) as log_store:
        pruned = prune_sessions(log_store, settings.exchange_dir, settings.exchange.session_minutes)
    if pruned:
        log.info("exchange: %d expired sessions swept", pruned)


def builds_executor(account: Settings) -> str:
    """Each account builds on a thread of its own: a slow or failing client never delays another.
    Within an account builds run one at a time: they share its store and its MoySklad budget."""
    return f"builds:{account.account or 'main'}"


def _trigger(feed: FeedSettings):
    """The feed's crontab (in the server's local time) when set, else its interval."""
    if feed.cron:
        return crontab_trigger(feed.cron)
    return IntervalTrigger(minutes=feed.interval_minutes)


def _describe(feed: FeedSettings) -> str:
    """The feed's schedule, for the start-up log line."""
    return f"feed {feed.name} cron '{feed.cron}'" if feed.cron else f"feed {feed.name} every {feed.interval_minutes:g} min"


def run_build(settings: Settings, feed: FeedSettings, sync: bool = True, force: bool = False) -> None:
    """One build, logged in one line; a failure leaves the previous file published and is never raised."""
    started = time.monotonic()
    try:
        result = build_feed(settings, feed, sync=sync, force=force)
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
        if feed.retailcrm is not None:
            run_push(settings, feed)


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
    """Turns the notes any process leaves into builds on the accounts' build threads.

    A ``rebuild`` note (MoySklad webhooks) waits until the webhooks have been quiet for the
    debounce time, then rebuilds the account's moysklad feeds once; an ``exchange`` note (a 1C
    import) does the same for the exchange feeds; a ``build`` note (the health page's button)
    builds its feed at the next free moment of its account's thread; a ``stock`` note (a stock
    webhook, for feeds that push to retailCRM) reads the changed stock and pushes it at the next
    free moment of that thread, without waiting.
    """

    def __init__(self, scheduler: BackgroundScheduler, settings: Settings):
        self.scheduler = scheduler
        self.settings = settings
        self.mailbox: Mailbox = settings.mailbox
        self.accounts = {view.account: view for view in settings.every_account()}
        self.first_seen: dict[tuple[str, str], float] = {}  # (kind, key) → when its current burst of notes began
        self.queued: set[tuple[str, str]] = set()  # (kind, key) of work waiting for a build thread
        self.stock_waiting: dict[str, dict] = {}  # account → the stock request its build thread will take next
        self.lock = threading.Lock()

    def poll(self) -> None:
        for note in self.mailbox.notes():
            if note.kind == REBUILD:
                account = self.accounts.get(note.key)
                self._rebuild(note, account, account.moysklad_feeds if account else (),
                              self.settings.webhooks.debounce_seconds, "webhook rebuild")
            elif note.kind == EXCHANGE:
                quiet = 0 if note.payload.get("urgent") else EXCHANGE_QUIET_SECONDS
                exchange_feeds = tuple(feed for feed in self.settings.feeds if feed.source == "exchange")
                self._rebuild(note, self.settings, exchange_feeds, quiet, "rebuild after a 1C exchange")
            elif note.kind == BUILD:
                self._build(note)
            elif note.kind == STOCK:
                self._stock(note)

    def _rebuild(self, note: Note, account: Settings | None, feeds: tuple[FeedSettings, ...], quiet: float,
                 what: str) -> None:
        """Queue one rebuild of ``feeds`` once requests stopped for ``quiet`` seconds, or have kept
        coming too long."""
        if account is None or not feeds:
            self.mailbox.take(note)
            return
        now, work = time.time(), (note.kind, note.key)
        first = self.first_seen.setdefault(work, note.posted_at)
        if now - note.posted_at < quiet and now - first < MAX_DEBOUNCE_FACTOR * quiet:
            return
        self.mailbox.take(note)
        del self.first_seen[work]
        if not self._enqueue(work):
            return  # one rebuild already waits for the build thread: it will see these changes too
        self.scheduler.add_job(self._run_rebuild, args=[work, account, feeds], executor=builds_executor(account),
                               id=f"{note.kind}-rebuild:{account.account}", name=what,
                               max_instances=2, misfire_grace_time=None)  # one running, one waiting

    def _run_rebuild(self, work: tuple[str, str], account: Settings, feeds: tuple[FeedSettings, ...]) -> None:
        """Build each feed; for moysklad feeds the first build's incremental sync serves them all."""
        self._dequeue(work)
        for index, feed in enumerate(feeds):
            run_build(account, feed, sync=index == 0)

    def _stock(self, note: Note) -> None:
        """A stock webhook: at once (no debounce) on the account's build thread, after what runs there now;
        requests arriving meanwhile join the one waiting."""
        self.mailbox.take(note)
        account = self.accounts.get(note.key)
        if account is None or not any(feed.retailcrm for feed in account.moysklad_feeds):
            return
        with self.lock:
            waiting = self.stock_waiting.get(note.key)
            self.stock_waiting[note.key] = merge_requests(waiting, note.payload)
            if waiting is not None:
                return
        self.scheduler.add_job(self._run_stock, args=[account], executor=builds_executor(account),
                               id=f"stock:{account.account}", name="stock webhook push",
                               max_instances=2, misfire_grace_time=None)  # one running, one waiting

    def _run_stock(self, account: Settings) -> None:
        with self.lock:
            request = self.stock_waiting.pop(account.account)
        run_stock_update(account, request)

    def _build(self, note: Note) -> None:
        found = self.settings.find_feed(note.key)
        if found is None:
            self.mailbox.take(note)
            return
        if not self._enqueue((BUILD, note.key)):
            return
        account, feed = found
        self.scheduler.add_job(self._run_build, args=[account, feed, note], executor=builds_executor(account),
                               id=f"manual:{feed.name}", name=f"build feed {feed.name} (asked for on the health page)",
                               misfire_grace_time=None)

    def _run_build(self, account: Settings, feed: FeedSettings, note: Note) -> None:
        """The note stays until the build starts, so the page shows the request as waiting until then."""
        self._dequeue((BUILD, feed.name))
        self.mailbox.take(note)
        force = bool(note.payload.get("force"))
        log.info("feed %s: build asked for on the health page%s", feed.name, " (forced past the guard)" if force else "")
        run_build(account, feed, force=force)

    def _enqueue(self, work: tuple[str, str]) -> bool:
        with self.lock:
            if work in self.queued:
                return False
            self.queued.add(work)
            return True

    def _dequeue(self, work: tuple[str, str]) -> None:
        with self.lock:
            self.queued.discard(work)
