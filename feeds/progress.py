"""A build in progress, seen from any process: the command line's progress lines and the health page's
«собирается».

While a feed builds, its process holds ``<data_dir>/progress/<feed>.lock`` (the kernel drops the lock
when the process dies, so a killed build never looks alive) and rewrites ``<feed>.json`` about once a
second with the current step: what it is, how far (done of total), the rate and the time left.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from core.clock import utc_now
from core.files import atomic_write, lock_holder, lock_is_held, release, try_lock
from store import StoreBusy

log = logging.getLogger(__name__)

PROGRESS_DIR = "progress"
WRITE_EVERY = 1.0  # seconds between two rewrites of the progress file
ECHO_EVERY = 5.0  # seconds between two progress lines of the same step on the command line
LOG_EVERY = 60.0  # seconds between two progress lines in the service's log (a build without a terminal)
# A step's rate is shown once it has run this long (the first items say little about the rest).
RATE_AFTER = 1.0


def progress_paths(data_dir: Path, feed: str) -> tuple[Path, Path]:
    """The lock a running build holds and the file it describes itself in."""
    folder = data_dir / PROGRESS_DIR
    return folder / f"{feed}.lock", folder / f"{feed}.json"


class BuildProgress:
    """Where one feed's build is; called as ``progress(stage, done, total=None)`` by the sync, the
    picture downloads and the renderer. ``echo`` receives a line for people now and then (the CLI)."""

    def __init__(self, data_dir: Path, feed: str, echo: Callable[[str], None] | None = None, clock=time.monotonic):
        self.lock_path, self.path = progress_paths(data_dir, feed)
        self.feed = feed
        self.echo = echo
        self.clock = clock
        self.lock = None
        self.step: dict | None = None
        self.note_text = ""
        self.written = self.echoed = float("-inf")
        self.echoed_done: int | None = None
        self.logged = clock()

    def __enter__(self) -> BuildProgress:
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = try_lock(self.lock_path, note_pid=True, patience=1.0)  # the page probes it for a moment
        if self.lock is None:
            raise StoreBusy(f"feed {self.feed} is already being built by process {lock_holder(self.lock_path)}")
        self.started_at = utc_now()
        self._write()
        return self

    def __exit__(self, *exc) -> None:
        self._echo_final()
        self.path.unlink(missing_ok=True)
        release(self.lock)

    def __call__(self, stage: str, done: int, total: int | None = None) -> None:
        now = self.clock()
        if self.step is None or self.step["stage"] != stage:
            self._echo_final()
            self.step = {"stage": stage, "started": now}
            self.echoed, self.echoed_done = float("-inf"), None
        self.step.update(done=done, total=total)
        finished = total is not None and done >= total
        if now - self.written >= WRITE_EVERY or finished or done == 0:
            self._write()
        if self.echo and (now - self.echoed >= ECHO_EVERY or finished):
            self._echo(now)
        elif not self.echo and now - self.logged >= LOG_EVERY:
            self.logged = now
            log.info("feed %s: %s", self.feed, describe(self.snapshot()))

    def note(self, text: str) -> None:
        """A milestone people should see (on the command line or in the log), e.g. a first publication."""
        self.note_text = text.strip()
        if self.echo:
            self.echo(text)
        else:
            log.info("feed %s: %s", self.feed, self.note_text)
        self._write()

    def snapshot(self) -> dict:
        """The current step as plain data: stage, done, total, rate (per second) and seconds left."""
        data = {"pid": os.getpid(), "started_at": self.started_at, "updated_at": utc_now(), "note": self.note_text}
        if self.step:
            now = self.clock()
            done, total = self.step["done"], self.step["total"]
            elapsed = now - self.step["started"]
            rate = done / elapsed if elapsed >= RATE_AFTER and done else None
            left = (total - done) / rate if rate and total is not None and total >= done else None
            data.update(stage=self.step["stage"], done=done, total=total, rate=rate, seconds_left=left)
        return data

    def _write(self) -> None:
        self.written = self.clock()
        with contextlib.suppress(OSError):  # a full disk must not fail the build for the sake of a progress note
            atomic_write(self.path, json.dumps(self.snapshot(), ensure_ascii=False))

    def _echo(self, now: float) -> None:
        self.echoed, self.echoed_done = now, self.step["done"]
        self.echo("  " + describe(self.snapshot()))

    def _echo_final(self) -> None:
        """The last figures of a step whose latest call was not printed."""
        if self.echo and self.step and self.step["done"] != self.echoed_done:
            self._echo(self.clock())


def describe(step: dict) -> str:
    """One progress line for the command line: «pictures: 1200/13414 (9%), 12.3/s, about 16 min left»."""
    done, total = step.get("done") or 0, step.get("total")
    text = f"{step.get('stage')}: {done}" + (f"/{total} ({done / total:.0%})" if total else "")
    if step.get("rate"):
        text += f", {step['rate']:.1f}/s"
    left = step.get("seconds_left")
    if left is not None and total and done < total:
        text += f", about {round(left / 60)} min left" if left >= 90 else f", about {max(1, round(left))} s left"
    return text


def read_progress(data_dir: Path, feed: str) -> dict | None:
    """The running build of a feed as its process last described it; None when no build runs."""
    lock_path, path = progress_paths(data_dir, feed)
    if not lock_is_held(lock_path):
        return None  # a file a killed build left behind says nothing
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
