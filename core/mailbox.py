"""Work any process asks of the scheduler, as one note per request in ``<data_dir>/mailbox/``.

A webhook, the health page's build button or a finished 1C exchange reaches whichever gunicorn
worker the client hit, while one process runs the scheduler (the holder of ``scheduler.lock``).
So the asker leaves a note and the scheduler reads the mailbox every few seconds. A note is named
by its kind and key (a feed, an account): asking again replaces it, and its time of last change
is when the work was last asked for, which is what debouncing needs.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from core.files import atomic_write, release, try_lock

MAILBOX_DIR = "mailbox"
SCHEDULER_LOCK = "scheduler.lock"
NO_KEY = "_"  # names of feeds and accounts never start with "_"

# The kinds of work a note asks for.
REBUILD = "rebuild"  # MoySklad said the catalog changed: rebuild an account's moysklad feeds (key: account)
BUILD = "build"  # the build button: build one feed now (key: feed name; payload: force)
EXCHANGE = "exchange"  # a 1C exchange imported files: rebuild the exchange feeds once it is quiet (no key)
STOCK = "stock"  # a MoySklad stock webhook: refresh an account's stock (key: account; payload: report URL)


@dataclass(frozen=True)
class Note:
    """One request waiting for the scheduler."""

    kind: str
    key: str
    payload: dict
    posted_at: float  # when it was last asked for (the file's modification time)
    path: Path


class Mailbox:
    """The notes of one data directory."""

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self.dir = self.data_dir / MAILBOX_DIR

    def post(self, kind: str, key: str = "", **payload) -> None:
        """Ask for work; a note of the same kind and key is replaced (the newest request wins)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self._path(kind, key), json.dumps({**payload, "posted_at": time.time()}, ensure_ascii=False))

    def prolong(self, kind: str, key: str = "") -> None:
        """Ask again for work already asked for, without a note when none waits: a rebuild waiting for an
        exchange to be quiet waits while the exchange still sends files."""
        try:
            os.utime(self._path(kind, key))
        except FileNotFoundError:  # none waits, or the scheduler has just taken it
            pass

    def notes(self, kind: str | None = None) -> list[Note]:
        """The waiting notes (of one kind), oldest first; a note being replaced meanwhile is skipped."""
        found = []
        pattern = f"{kind}.*.json" if kind else "*.json"
        for path in self.dir.glob(pattern) if self.dir.is_dir() else ():
            note_kind, _, rest = path.name.partition(".")
            key = rest[:-len(".json")]
            try:
                posted_at = path.stat().st_mtime
                payload = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            found.append(Note(note_kind, "" if key == NO_KEY else key, payload, posted_at, path))
        return sorted(found, key=lambda note: note.posted_at)

    def note(self, kind: str, key: str = "") -> Note | None:
        return next((n for n in self.notes(kind) if n.key == key), None)

    def take(self, note: Note) -> None:
        """The work is being done: a request arriving after this asks for it again."""
        note.path.unlink(missing_ok=True)

    def _path(self, kind: str, key: str) -> Path:
        return self.dir / f"{kind}.{key or NO_KEY}.json"

    # --- the one reader ---------------------------------------------------------------------------

    @property
    def lock_path(self) -> Path:
        return self.data_dir / SCHEDULER_LOCK

    def claim_reader(self):
        """Become the process that reads the mailbox (the scheduler): a held lock file, or None."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return try_lock(self.lock_path, note_pid=True)

    def reader_running(self) -> bool:
        """Whether some process reads the mailbox (tried, never kept, from any process)."""
        handle = try_lock(self.lock_path)
        if handle is None:
            return True
        release(handle)
        return False
