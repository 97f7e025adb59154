"""One bounded pool runs the builds of every account, in the order that keeps all of them fresh.

The scheduler's triggers only queue work here; at most ``size`` works run at once whatever the
number of accounts, so memory grows with the work in hand, not with the accounts. The next work
to start is, among those whose account runs nothing now (an account's builds share its store's
writer lock and its MoySklad rate budget, so they never overlap):

1. asked-for work (a webhook, the build button, a 1C exchange, a stock webhook), oldest first;
2. scheduled builds, the account that started something longest ago first (one that never did
   before all), so an account's next build waits behind the others' earlier ones.

The same work queued twice (same account, kind and feed) waits once. Whenever the queue changes,
and at least every few seconds, its state goes to ``<data_dir>/build-queue.json`` for the health
page and ``/metrics``, which any gunicorn worker may serve: :func:`read_queue_state` reads it.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from core.account_context import working_for
from core.files import atomic_write

log = logging.getLogger(__name__)

QUEUE_FILE = "build-queue.json"
STATE_EVERY_SECONDS = 5.0
# A state file older than this was left by a scheduler that is gone: it says nothing about the queue now.
STATE_TRUSTED_SECONDS = 30.0
# Builds mostly wait on MoySklad (network, its 45 units / 3 s per account), so a core keeps several
# busy; bench/many_clients_bench.py measured 2 to 16 per instance (README, "Many clients").
BUILDS_PER_CORE = 4

# The kind of a feed's build on its schedule (and of its first one at start-up). Every other kind was
# asked for (the mailbox's kinds: a webhook rebuild, the build button, a 1C exchange, a stock webhook)
# and goes first.
SCHEDULED = "scheduled"


def default_pool_size() -> int:
    """Builds at once when ``max_concurrent_builds`` is 0: a few per core this process may use."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return BUILDS_PER_CORE * max(1, cores)


@dataclass
class Work:
    """One queued piece of an account's work: ``run`` does it (and never raises for a failed build)."""

    account: str  # '' for the main account
    kind: str
    feed: str  # the feed it is for, '' for an account's work (a rebuild, a stock push)
    run: Callable[[], None] = field(repr=False)
    feeds: tuple[str, ...] = ()  # the feeds it builds, for the health page
    queued_at: float = 0.0  # Unix time
    started_at: float | None = None
    order: int = 0  # queue order among works of the same rank
    on_drop: Callable[[], None] | None = field(default=None, repr=False)  # a shutdown drops it: ask for it again

    @property
    def key(self) -> tuple[str, str, str]:
        return self.account, self.kind, self.feed

    @property
    def urgent(self) -> bool:
        return self.kind != SCHEDULED

    def as_dict(self) -> dict:
        return {"account": self.account, "kind": self.kind, "feed": self.feed, "feeds": list(self.feeds),
                "queued_at": round(self.queued_at, 3),
                "started_at": None if self.started_at is None else round(self.started_at, 3)}


class BuildPool:
    """At most ``size`` works at once, one per account, asked-for work first, accounts taken in turn."""

    def __init__(self, size: int, state_path: Path | None = None):
        self.size = size
        self.state_path = state_path
        self._lock = threading.Lock()
        self._waiting: dict[tuple[str, str, str], Work] = {}
        self._running: dict[tuple[str, str, str], Work] = {}
        self._last_started: dict[str, float] = {}  # account → when its last work started
        self._longest_wait = 0.0  # seconds, over every work started so far
        self._order = itertools.count()
        self._executor = ThreadPoolExecutor(size, thread_name_prefix="build")
        self._stopping = False
        self._changed = threading.Event()
        self._writer: threading.Thread | None = None
        # feed name → when its schedule makes it due next (Unix time): the scheduler's own answer, for the pages
        self.next_runs: Callable[[], dict[str, float]] | None = None
        if state_path is not None:
            self._writer = threading.Thread(target=self._write_state_loop, name="build-queue-state", daemon=True)
            self._writer.start()

    def submit(self, account: str, kind: str, feed: str, run: Callable[[], None], feeds: tuple[str, ...] = (),
               on_drop: Callable[[], None] | None = None) -> bool:
        """Queue the work; False when the same work already waits (it will do what this one asks) or
        the pool is stopping. ``on_drop`` is called if a shutdown drops it before it starts."""
        with self._lock:
            key = (account, kind, feed)
            if self._stopping or key in self._waiting:
                return False
            self._waiting[key] = Work(account, kind, feed, run, feeds or ((feed,) if feed else ()),
                                      queued_at=time.time(), order=next(self._order), on_drop=on_drop)
            self._start_what_may_run()
        self._changed.set()
        return True

    def snapshot(self) -> dict:
        """The queue now, as the state file holds it."""
        now = time.time()
        with self._lock:
            waiting = sorted(self._waiting.values(), key=self._rank)
            running = sorted(self._running.values(), key=lambda work: work.started_at or 0)
            longest = self._longest_wait
        return {"written_at": round(now, 3), "pid": os.getpid(), "size": self.size,
                "next_runs": self.next_runs() if self.next_runs else {},
                "waiting": [work.as_dict() for work in waiting], "running": [work.as_dict() for work in running],
                "oldest_wait_seconds": round(max((now - work.queued_at for work in waiting), default=0.0), 3),
                "longest_wait_seconds": round(longest, 3)}

    def shutdown(self, wait: bool = True) -> None:
        """Start nothing more (what waits is dropped: the next scheduler queues it again); with ``wait``
        the running works finish first."""
        with self._lock:
            self._stopping = True
            dropped = list(self._waiting.values())
            self._waiting.clear()
        for work in dropped:
            if work.on_drop is not None:
                try:
                    work.on_drop()
                except OSError as exc:  # a full disk: the next scheduled build does the work instead
                    log.warning("%s work of account %s was not asked for again: %s", work.kind, work.account or "main", exc)
        self._executor.shutdown(wait=wait)
        self._changed.set()
        if wait and self._writer is not None:
            self._writer.join(timeout=STATE_EVERY_SECONDS)

    # --- the order -------------------------------------------------------------------------------

    def _rank(self, work: Work) -> tuple:
        if work.urgent:
            return 0, 0.0, work.order
        return 1, self._last_started.get(work.account, float("-inf")), work.order

    def _start_what_may_run(self) -> None:
        """Under the lock: start the best waiting works while the pool has room."""
        while not self._stopping and len(self._running) < self.size:
            busy = {work.account for work in self._running.values()}
            work = min((w for w in self._waiting.values() if w.account not in busy), key=self._rank, default=None)
            if work is None:
                return
            del self._waiting[work.key]
            work.started_at = time.time()
            try:
                self._executor.submit(self._run, work)
            except RuntimeError:  # the interpreter is exiting: nothing new starts
                self._stopping = True
                return
            self._running[work.key] = work
            self._last_started[work.account] = work.started_at
            self._longest_wait = max(self._longest_wait, work.started_at - work.queued_at)

    def _run(self, work: Work) -> None:
        try:
            with working_for(work.account):
                work.run()
        except Exception:  # a bug in one account's work must not stop the pool
            log.exception("%s work of account %s crashed", work.kind, work.account or "main")
        finally:
            with self._lock:
                self._running.pop(work.key, None)
                self._start_what_may_run()
            self._changed.set()

    # --- the state file --------------------------------------------------------------------------

    def _write_state_loop(self) -> None:
        while True:
            self._changed.wait(STATE_EVERY_SECONDS)
            self._changed.clear()
            self._write_state()
            with self._lock:
                if self._stopping and not self._running:
                    return

    def _write_state(self) -> None:
        try:
            atomic_write(self.state_path, json.dumps(self.snapshot()))
        except OSError as exc:  # a full disk: the pages show no queue, the builds go on
            log.warning("the build queue's state was not written to %s: %s", self.state_path, exc)


def read_queue_state(data_dir: Path, now: float | None = None) -> dict | None:
    """The queue as the scheduling process last wrote it, or None when no live scheduler wrote it lately."""
    try:
        state = json.loads((Path(data_dir) / QUEUE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    now = time.time() if now is None else now
    if not isinstance(state, dict) or now - float(state.get("written_at") or 0) > STATE_TRUSTED_SECONDS:
        return None
    return state
