"""Runs: every write of a source (a sync, an import, a build) is one run, one transaction, one lock.

A run takes an exclusive per-source lock file, records itself in ``runs``, and commits its data only
when it ends without an exception; its row then says ``ok``. Otherwise the data rolls back and
the row says ``failed`` (or ``interrupted``) with the error. A run killed outright (kill -9) leaves
its row ``running``: whoever next takes the lock, or reads the health page, marks it interrupted.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from core.clock import utc_now
from core.files import LockTaken, locked
from store.database import StoreBusy

RUNS_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, source TEXT NOT NULL, kind TEXT NOT NULL,
    mode TEXT, status TEXT NOT NULL, started_at TEXT NOT NULL, finished_at TEXT,
    counts TEXT, requests INTEGER, throttled INTEGER, retries INTEGER, error TEXT,
    bookmark TEXT, pid INTEGER, number INTEGER, commits_as_it_goes INTEGER);
CREATE INDEX IF NOT EXISTS runs_by_source ON runs (source, kind, id);
CREATE INDEX IF NOT EXISTS runs_running ON runs (source) WHERE status = 'running';
CREATE TABLE IF NOT EXISTS skipped (
    run_id INTEGER NOT NULL, source TEXT NOT NULL, item_type TEXT, item_id TEXT,
    name TEXT, reason TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS skipped_by_run ON skipped (run_id);
CREATE TABLE IF NOT EXISTS run_totals (
    source TEXT NOT NULL, kind TEXT NOT NULL, runs INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0,
    requests INTEGER NOT NULL DEFAULT 0, throttled INTEGER NOT NULL DEFAULT 0, retries INTEGER NOT NULL DEFAULT 0,
    counts TEXT NOT NULL DEFAULT '{}', PRIMARY KEY (source, kind)) WITHOUT ROWID;
"""
# runs.number (a run's place among its source's and kind's: build №3) and runs.commits_as_it_goes came after the table.
RUNS_ADDED_COLUMNS = (("runs", "number", "INTEGER"), ("runs", "commits_as_it_goes", "INTEGER"))
KILLED = "the run stopped without finishing (process killed or machine restarted); "
INTERRUPTED = KILLED + "nothing of it was saved"
INTERRUPTED_KEEPING = KILLED + "what it finished before stays saved, the next run does the rest"
# Runs of each source and kind kept in the log (the health page shows the latest few; the counters live in
# run_totals): a service building every few minutes for a year would otherwise keep hundreds of thousands, and
# the pages that read them grow slower with every one. The latest successful run is kept whatever its age.
RUNS_KEPT = 1000


@dataclass
class RunStats:
    """What a run did; saved in the runs table when the run ends, successful or not."""

    counts: dict = field(default_factory=dict)
    requests: int = 0
    throttled: int = 0
    retries: int = 0

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n


class Run:
    """One run in progress: its id, what it did so far and what it left out."""

    def __init__(self, store, run_id: int, source: str):
        self.store = store
        self.db = store.db
        self.id = run_id
        self.source = source
        self.stats = RunStats()
        self.skipped: list[dict] = []
        self.mode: str | None = None
        self.bookmark: str | None = None
        self.kind: str | None = None  # what the run does for its source (sync, build, push, import)
        self.number = 0  # its place among its source's and kind's runs (sync №6), unlike the id every source shares

    def skip(self, item_type: str, item_id: str | None, name: str | None, reason: str) -> None:
        """Record an item left out and why, for the operator."""
        self.skipped.append({"run_id": self.id, "source": self.source, "item_type": item_type,
                             "item_id": item_id, "name": name, "reason": reason})
        self.stats.add("skipped")


class RunLog:
    """Runs of a store (mixed into a :class:`store.database.Database` whose schema has RUNS_SCHEMA)."""

    run_class = Run

    @contextlib.contextmanager
    def run(self, source: str, kind: str, mode: str | None = None, one_transaction: bool = True) -> Iterator[Run]:
        """One writer run: an exclusive lock, a row in ``runs`` and one data transaction.

        The data is committed only when the block ends without an exception; the run row then
        says ``ok``. On an exception the data rolls back, the row says ``failed`` with the
        error, and the exception propagates. Without ``one_transaction`` the block commits its
        own writes as it goes (a push to retailCRM records each batch retailCRM accepted) and
        holds no write lock in between.
        """
        with self._writer_lock(source):
            self._close_interrupted_runs(source)
            with self.db.atomic():  # writes first: a deferred transaction that read first could not write after another
                run_id, number = self.db.execute(
                    "INSERT INTO runs (source, kind, mode, status, started_at, pid, commits_as_it_goes, number) "
                    "VALUES (?, ?, ?, 'running', ?, ?, ?, "
                    "coalesce((SELECT number FROM runs WHERE source = ? AND kind = ? ORDER BY id DESC LIMIT 1), 0) + 1) "
                    "RETURNING id, number",
                    [source, kind, mode, utc_now(), os.getpid(), int(not one_transaction), source, kind]).fetchone()
                self._add_to_totals(source, kind, runs=1)
            run = self.run_class(self, run_id, source)
            run.kind, run.number = kind, number
            run.mode = mode  # kept unless the run itself says otherwise (a sync says full or incremental)
            try:
                if one_transaction:
                    with self.immediate():
                        yield run
                        self._finish(run, "ok", None)
                else:
                    yield run
                    with self.db.atomic():
                        self._finish(run, "ok", None)
            except BaseException as exc:
                with self.db.atomic():
                    self._finish(run, "interrupted" if _is_shutdown(exc) else "failed", _describe(exc, one_transaction))
                    self._save_skipped(run)
                raise

    def _finish(self, run: Run, status: str, error: str | None) -> None:
        self.db["runs"].update(
            run.id,
            {"status": status, "finished_at": utc_now(), "counts": json.dumps(run.stats.counts, ensure_ascii=False),
             "requests": run.stats.requests, "throttled": run.stats.throttled, "retries": run.stats.retries,
             "error": error, "mode": run.mode, "bookmark": run.bookmark},
        )
        self._add_to_totals(run.source, run.kind, failed=int(status != "ok"), requests=run.stats.requests,
                            throttled=run.stats.throttled, retries=run.stats.retries, counts=run.stats.counts)
        if status == "ok":
            self._save_skipped(run)
        self._forget_old_runs(run.source, run.kind)

    def _add_to_totals(self, source: str, kind: str, *, runs: int = 0, failed: int = 0, requests: int = 0,
                       throttled: int = 0, retries: int = 0, counts: dict | None = None) -> None:
        """Count a run into its source's and kind's totals (metrics' counters), which outlive the runs forgotten.
        Called after a write of the same transaction, which holds the write lock for its read."""
        row = self.db.execute("SELECT counts FROM run_totals WHERE source = ? AND kind = ?", [source, kind]).fetchone()
        summed = json.loads(row[0]) if row else {}
        for key, value in (counts or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                total, runs_with_it = summed.get(key, (0, 0))
                summed[key] = (total + value, runs_with_it + 1)
        self.db.execute(
            "INSERT INTO run_totals (source, kind, runs, failed, requests, throttled, retries, counts) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (source, kind) DO UPDATE SET runs = runs + excluded.runs, "
            "failed = failed + excluded.failed, requests = requests + excluded.requests, "
            "throttled = throttled + excluded.throttled, retries = retries + excluded.retries, counts = excluded.counts",
            [source, kind, runs, failed, requests or 0, throttled or 0, retries or 0, json.dumps(summed, ensure_ascii=False)])

    def _forget_old_runs(self, source: str, kind: str) -> None:
        """Delete the runs of a source and kind older than the latest RUNS_KEPT, and what they skipped, but
        the latest successful one (the page says when the feed served now was built)."""
        condition = ("source = ? AND kind = ? AND id < (SELECT id FROM runs WHERE source = ? AND kind = ? "
                     "ORDER BY id DESC LIMIT 1 OFFSET ?) AND id IS NOT (SELECT max(id) FROM runs "
                     "WHERE source = ? AND kind = ? AND status = 'ok')")
        params = [source, kind, source, kind, RUNS_KEPT - 1, source, kind]
        self.db.execute(f"DELETE FROM skipped WHERE run_id IN (SELECT id FROM runs WHERE {condition})", params)
        self.db.execute(f"DELETE FROM runs WHERE {condition}", params)

    def fill_new_schema(self, new_tables: set[str], added_columns: set[tuple[str, str]]) -> None:
        """Derive the run numbers, totals and ways of committing a store written by an earlier version lacks from the
        runs it has."""
        with self.db.atomic():
            if ("runs", "commits_as_it_goes") in added_columns:  # before it, retailCRM pushes alone committed as they went
                self.db.execute("UPDATE runs SET commits_as_it_goes = (kind = 'push')")
            if ("runs", "number") in added_columns:
                self.db.execute("UPDATE runs SET number = numbered.n FROM (SELECT id, row_number() OVER "
                                "(PARTITION BY source, kind ORDER BY id) AS n FROM runs) AS numbered "
                                "WHERE runs.id = numbered.id")
            if "run_totals" in new_tables:
                for source, kind in self.db.execute("SELECT DISTINCT source, kind FROM runs").fetchall():
                    runs, failed, requests, throttled, retries = self.db.execute(
                        "SELECT count(*), coalesce(sum(status IN ('failed', 'interrupted')), 0), coalesce(sum(requests), 0), "
                        "coalesce(sum(throttled), 0), coalesce(sum(retries), 0) FROM runs WHERE source = ? AND kind = ?",
                        [source, kind]).fetchone()
                    summed = {key: (total, count) for key, total, count in self.db.execute(
                        "SELECT key, sum(value), count(*) FROM runs, json_each(runs.counts) WHERE source = ? AND kind = ? "
                        "AND json_each.type IN ('integer', 'real') GROUP BY key", [source, kind])}
                    self.db.execute("INSERT OR REPLACE INTO run_totals VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                    [source, kind, runs, failed, requests, throttled, retries, json.dumps(summed, ensure_ascii=False)])

    def _save_skipped(self, run: Run) -> None:
        if run.skipped:
            self.db["skipped"].insert_all(run.skipped)
            run.skipped = []

    @contextlib.contextmanager
    def _writer_lock(self, source: str):
        try:
            with locked(self.path.with_name(f"{self.path.name}.{source}.lock"), wait=False, note_pid=True):
                yield
        except LockTaken as exc:
            raise StoreBusy(f"another {source} run is in progress on {self.path} (process {exc.holder})") from None

    def settle_dead_runs(self, source: str) -> None:
        """Runs left 'running' by a process that died (kill -9, OOM) are marked interrupted now rather
        than at the source's next run, so the health page tells the truth meanwhile."""
        if not self.db.execute("SELECT 1 FROM runs WHERE source = ? AND status = 'running' LIMIT 1", [source]).fetchone():
            return
        try:
            with self._writer_lock(source):
                self._close_interrupted_runs(source)
        except StoreBusy:
            pass  # its process is alive and holds the lock: it is really running

    def _close_interrupted_runs(self, source: str) -> None:
        """Runs still 'running' while we hold the lock died without finishing (kill -9, power loss)."""
        with self.db.atomic():
            dead = self.db.execute("UPDATE runs SET status='interrupted', finished_at=?, "
                                   "error = CASE WHEN commits_as_it_goes THEN ? ELSE ? END "
                                   "WHERE source=? AND status='running' RETURNING kind",
                                   [utc_now(), INTERRUPTED_KEEPING, INTERRUPTED, source]).fetchall()
            for kind, count in collections.Counter(kind for (kind,) in dead).items():
                self._add_to_totals(source, kind, failed=count)

    def last_run(self, source: str, kind: str | None = None, status: str | None = None) -> dict | None:
        where, params = ["source = ?"], [source]
        if kind:
            where.append("kind = ?")
            params.append(kind)
        if status:
            where.append("status = ?")
            params.append(status)
        rows = list(self.db.query(f"SELECT * FROM runs WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT 1", params))
        return _decode_run(rows[0]) if rows else None

    def recent_runs(self, limit: int = 30) -> list[dict]:
        return [_decode_run(r) for r in self.db.query("SELECT * FROM runs ORDER BY id DESC LIMIT ?", [limit])]

    def latest_run_id(self) -> int:
        """The newest run of any source (0 before the first): every later run has a larger id."""
        return self.db.execute("SELECT coalesce(max(id), 0) FROM runs").fetchone()[0]

    def runs_of(self, source: str, kind: str, limit: int) -> list[dict]:
        """The latest runs of one source and kind, newest first (the health page's history)."""
        rows = self.db.query("SELECT * FROM runs WHERE source = ? AND kind = ? ORDER BY id DESC LIMIT ?", [source, kind, limit])
        return [_decode_run(r) for r in rows]

    def run_totals(self, source: str, kind: str) -> dict:
        """Runs started, failures, API requests, 429s and retries over every run ever recorded (for metrics)."""
        row = self.db.execute("SELECT runs, failed, requests, throttled, retries FROM run_totals WHERE source = ? AND kind = ?",
                              [source, kind]).fetchone() or (0, 0, 0, 0, 0)
        return dict(zip(("runs", "failed", "requests", "throttled", "retries"), row))

    def counted_totals(self, source: str, kind: str) -> dict[str, list]:
        """{count key: [sum, runs that counted it]} of the numeric counts of every run ever recorded."""
        row = self.db.execute("SELECT counts FROM run_totals WHERE source = ? AND kind = ?", [source, kind]).fetchone()
        return json.loads(row[0]) if row else {}

    def skipped_items(self, run_id: int) -> list[dict]:
        return list(self.db.query("SELECT item_type, item_id, name, reason FROM skipped WHERE run_id = ?", [run_id]))


def _is_shutdown(exc: BaseException) -> bool:
    """The process is stopping (Ctrl+C, or a service restart caught the run mid-way)."""
    return isinstance(exc, KeyboardInterrupt) or (isinstance(exc, RuntimeError) and "interpreter shutdown" in str(exc))


def _describe(exc: BaseException, one_transaction: bool) -> str:
    """The error a run records: an interruption says what of the run was kept (one that commits as it goes keeps
    what it finished)."""
    if _is_shutdown(exc):
        kept = ("nothing of it was saved, the next run redoes it" if one_transaction else
                "what it finished before stays saved, the next run does the rest")
        return f"the run was interrupted (Ctrl-C, or the service stopping); {kept}"
    return str(exc) or type(exc).__name__


def _decode_run(row: dict) -> dict:
    row = dict(row)
    row["counts"] = json.loads(row["counts"]) if row.get("counts") else {}
    return row
