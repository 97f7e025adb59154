"""One SQLite file opened the way every store in this package opens it: WAL, schema, transactions.

Each store class declares the tables it owns in ``SCHEMA``; opening creates what is missing. Open
a store with ``with``: the connection is closed when the block ends, whatever happens in it.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import sqlite3
import threading
from pathlib import Path

import sqlite_utils

from core.files import locked

# sqlite3 binds None through its adapter protocol: with no adapter for it, it asks the protocol for
# __adapt__ and the None for __conform__, two failed lookups that each format an AttributeError (some
# 3,000 instructions a NULL; a full sync binds hundreds of thousands). With one, a dictionary lookup and a call
# bind it as NULL.
sqlite3.register_adapter(type(None), lambda value: None)


class StoreError(Exception):
    """A store cannot be opened or written."""


class StoreBusy(StoreError):
    """Another run holds the writer lock of this store."""


# SQLite's locks on a file are POSIX record locks, which belong to the process: closing any descriptor of
# the file releases all of them. A copy of SQLite keeps track of its own descriptors so that this never
# happens to it, but two copies in one process (Python's sqlite3 and the one inside apsw) know nothing of
# each other: a connection of one closing the store would silently release the other's locks, its write
# lock included, and let another process write at the same time ("Multiple copies of SQLite linked into the
# same application", https://www.sqlite.org/howtocorrupt.html). So a process has a store file open through
# one library at a time (:class:`LibraryClaim`); tests/store checks what happens otherwise.
_OPEN_THROUGH: dict[str, collections.Counter] = {}  # real path -> {library: connections open in this process}
_OPEN_THROUGH_LOCK = threading.Lock()


class LibraryClaim:
    """One connection to a store file counted as opened through ``library`` in this process; StoreError
    when the other library has the file open here. :meth:`close` closes the connection and uncounts it, once."""

    def __init__(self, path: Path, library: str):
        self.key, self.library = os.path.realpath(path), library
        with _OPEN_THROUGH_LOCK:
            libraries = _OPEN_THROUGH.setdefault(self.key, collections.Counter())
            others = sorted(name for name, count in libraries.items() if count and name != library)
            if others:
                raise StoreError(f"the store {path} is open in this process through {others[0]}: opening it "
                                 f"through {library} too would release the other's locks when one of them closes it")
            libraries[library] += 1
        self.counted = True

    def close(self, connection) -> None:
        """Close ``connection`` (None: it never opened) and stop counting it; again, it does nothing."""
        try:
            if connection is not None:
                connection.close()
        finally:
            with _OPEN_THROUGH_LOCK:
                if self.counted:
                    self.counted = False
                    _OPEN_THROUGH[self.key][self.library] -= 1


class Database:
    """A connection to one store file with its schema in place."""

    SCHEMA = ""
    # (table, column, declaration) added to a table after it was first created: added where missing
    ADDED_COLUMNS: tuple[tuple[str, str, str], ...] = ()

    def __init__(self, path: str | os.PathLike, wait_seconds: float = 30):
        """``wait_seconds``: how long a write waits for another writer to commit (SQLite has one writer)."""
        self.path = Path(path)
        self.db = None
        self._claim = LibraryClaim(self.path, "sqlite3")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite_utils.Database(sqlite3.connect(str(self.path), timeout=wait_seconds,
                                                            check_same_thread=False))
            if self.db.journal_mode != "wal":  # a new file: switching it needs it to itself, so openers take turns
                with locked(self._schema_lock):
                    self.db.enable_wal()
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA journal_size_limit=67108864")  # a big run's WAL shrinks back after it
            self.db.execute("PRAGMA foreign_keys=OFF")
            # Debian builds SQLite with SECURE_DELETE: every page a temporary (staging) table frees would be
            # zeroed and written again when it is dropped; nothing is kept there that needs it.
            self.db.execute("PRAGMA temp.secure_delete=OFF")
            if not self._schema_complete():
                # A connection that read the schema while another process was creating it would run the
                # CREATEs as a writer and wait for that process's whole first run: wait for its creating only.
                with locked(self._schema_lock):
                    if not self._schema_complete():
                        tables = self._tables()
                        self.db.conn.executescript(self.SCHEMA)
                        added = self._missing_columns()
                        for table, column, declaration in added:
                            self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
                        if tables and hasattr(self, "fill_new_schema"):  # a file an earlier version wrote
                            self.fill_new_schema(self._tables() - tables, {(table, column) for table, column, _ in added})
        except BaseException as exc:
            self.close()
            if isinstance(exc, (OSError, sqlite3.Error)):
                raise StoreError(f"cannot open the store {self.path}: {exc}") from exc
            raise

    @property
    def _schema_lock(self) -> Path:
        return self.path.with_name(f"{self.path.name}.schema.lock")

    def close(self) -> None:
        db, self.db = self.db, None
        self._claim.close(db)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _schema_complete(self) -> bool:
        wanted = set(re.findall(r"CREATE (?:TABLE|INDEX) IF NOT EXISTS (\w+)", self.SCHEMA))
        return wanted <= self._tables() and not self._missing_columns()

    def _tables(self) -> set[str]:
        """The names of the file's tables and indexes."""
        return {name for (name,) in self.db.execute("SELECT name FROM sqlite_master")}

    def _missing_columns(self) -> list[tuple[str, str, str]]:
        """The ADDED_COLUMNS a store file created by an earlier version lacks."""
        return [(table, column, declaration) for table, column, declaration in self.ADDED_COLUMNS
                if column not in {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}]

    @contextlib.contextmanager
    def immediate(self):
        """A transaction that takes the write lock at once (waiting up to the busy timeout).

        A deferred one that reads first and writes later fails outright with "database is
        locked" when another writer committed in between; a run reads its bookmark before writing.
        """
        with self._transaction("BEGIN IMMEDIATE"):
            yield

    @contextlib.contextmanager
    def deferred(self):
        """A transaction that takes no lock on the file until it writes there: for temporary tables."""
        with self._transaction("BEGIN"):
            yield

    @contextlib.contextmanager
    def _transaction(self, begin: str):
        self.db.execute(begin)
        try:
            yield
        except BaseException:
            self.db.rollback()
            raise
        self.db.commit()

    @contextlib.contextmanager
    def page_cache(self, kib: int):
        """A bigger SQLite page cache for the length of one big write, then the connection's own again."""
        previous = self.db.execute("PRAGMA cache_size").fetchone()[0]
        self.db.execute(f"PRAGMA cache_size = -{int(kib)}")
        try:
            yield
        finally:
            self.db.execute(f"PRAGMA cache_size = {int(previous)}")
