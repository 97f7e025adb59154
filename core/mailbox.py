"""Work any process asks of the scheduler, as one note per request in ``<data_dir>/mailbox/``.

A webhook, the health page's build button or a finished 1C exchange reaches whichever gunicorn
worker the client hit, while one process runs the scheduler (the holder of ``scheduler.lock``).
So the asker leaves a note and the scheduler reads the mailbox every few seconds. A note is named
by its kind and key (a feed, an account): asking again replaces it, and its time of last change
is when the work was last asked for, which is what debouncing needs. A rebuild or stock note asked
for again is joined with the one waiting (:data:`JOINS`), under a lock that every worker's post and
the scheduler's take hold, so two webhooks at once, or one arriving as the scheduler takes the note,
lose nothing.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from core.files import atomic_write, locked, release, try_lock

MAILBOX_DIR = "mailbox"
SCHEDULER_LOCK = "scheduler.lock"
NO_KEY = "_"  # names of feeds and accounts never start with "_"

# The kinds of work a note asks for.
REBUILD = "rebuild"  # MoySklad said the catalog changed: rebuild an account's moysklad feeds (key: account)
BUILD = "build"  # the build button: build one feed now (key: feed name; payload: force)
EXCHANGE = "exchange"  # a 1C exchange imported files: rebuild the exchange feeds once it is quiet (no key)
STOCK = "stock"  # a MoySklad stock webhook: refresh an account's stock (key: account; payload: report URL)
LOCK = ".lock"


def join_rebuild(waiting: dict, new: dict) -> dict:
    """Two rebuild requests as one: every feed either names (a stock webhook leaves out the feeds that push: their
    fast path has it), and a full sync if either asks for one, because something was deleted (an incremental sync
    reads what changed, never what is gone: the goods would sell on until the daily full sync)."""
    return {"feeds": sorted(set(waiting.get("feeds") or ()) | set(new.get("feeds") or ())),
            "full": bool(waiting.get("full")) or bool(new.get("full"))}


def join_stock(waiting: dict, new: dict) -> dict:
    """Two stock requests as one: the earliest moment to read from, the earliest webhook to answer for."""
    merged = dict(new)
    for key in ("changed_since", "received_at"):
        known = [value for value in (waiting.get(key), new.get(key)) if value]
        merged[key] = min(known) if known else None
    return merged


# Kinds whose requests add up; for the others the newest note wins.
JOINS = {REBUILD: join_rebuild, STOCK: join_stock}


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
        """Ask for work: joined with the note of the same kind and key still waiting (see :data:`JOINS`), or
        replacing it (the newest request wins)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self._path(kind, key)
        with locked(self.dir / LOCK):
            waiting = self._read(path) if kind in JOINS else None
            if waiting is not None:
                payload = JOINS[kind]({k: v for k, v in waiting[1].items() if k != "posted_at"}, payload)
            atomic_write(path, json.dumps({**payload, "posted_at": time.time()}, ensure_ascii=False))

    def prolong(self, kind: str, key: str = "") -> None:
        """Ask again for work already asked for, without a note when none waits: a rebuild waiting for an
        exchange to be quiet waits while the exchange still sends files."""
        try:
            os.utime(self._path(kind, key))
        except FileNotFoundError:  # none waits, or the scheduler has just taken it
            pass

    def notes(self, kind: str | None = None) -> list[Note]:
        """The waiting notes (of one kind), oldest first; a note being replaced meanwhile is skipped."""
        pattern = f"{kind}.*.json" if kind else "*.json"
        found = [self._note(path) for path in (self.dir.glob(pattern) if self.dir.is_dir() else ())]
        return sorted((note for note in found if note is not None), key=lambda note: note.posted_at)

    def note(self, kind: str, key: str = "") -> Note | None:
        return self._note(self._path(kind, key))

    def take(self, note: Note) -> bool:
        """The work is being done: the note goes, unless a request came after it was read (that note stays, and
        holds this one's work too). A request arriving after this asks for the work again."""
        with locked(self.dir / LOCK):
            current = self._read(note.path)
            if current is not None and current[1] != note.payload:
                return False
            note.path.unlink(missing_ok=True)
        return True

    def _note(self, path: Path) -> Note | None:
        note_kind, _, rest = path.name.partition(".")
        key = rest[:-len(".json")]
        found = self._read(path)
        return None if found is None else Note(note_kind, "" if key == NO_KEY else key, found[1], found[0], path)

    @staticmethod
    def _read(path: Path) -> tuple[float, dict] | None:
        """(time of last change, payload) of a note; None when there is none, or it is being replaced."""
        try:
            return path.stat().st_mtime, json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

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
