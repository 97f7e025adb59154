"""The catalog store: one SQLite file shared by every source (MoySklad sync, CommerceML exchange).

Tables are source-neutral: each row carries the ``source`` it came from, so a full MoySklad sync
only reconciles what MoySklad owns. Money is kept in kopecks (integers), quantities as reals.
Writers work inside :meth:`CatalogStore.run`, one transaction per run: a run that fails leaves
the previous state untouched, and readers (WAL) keep seeing that state until the commit.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import operator
import os
import re
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import sqlite_utils

SCHEMA = """
CREATE TABLE IF NOT EXISTS categories (
    source TEXT NOT NULL, id TEXT NOT NULL, parent_id TEXT, name TEXT NOT NULL,
    code TEXT, external_code TEXT, archived INTEGER NOT NULL DEFAULT 0,
    removed INTEGER NOT NULL DEFAULT 0, removed_at TEXT, updated TEXT, seen_run INTEGER,
    PRIMARY KEY (source, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS products (
    source TEXT NOT NULL, id TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL,
    code TEXT, article TEXT, external_code TEXT, category_id TEXT, description TEXT,
    unit_id TEXT, vat REAL, vat_enabled INTEGER, weight REAL, volume REAL,
    variants_count INTEGER NOT NULL DEFAULT 0, archived INTEGER NOT NULL DEFAULT 0,
    removed INTEGER NOT NULL DEFAULT 0, removed_at TEXT, updated TEXT, seen_run INTEGER,
    PRIMARY KEY (source, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS offers (
    source TEXT NOT NULL, id TEXT NOT NULL, product_id TEXT NOT NULL, kind TEXT NOT NULL,
    name TEXT NOT NULL, code TEXT, article TEXT, external_code TEXT,
    barcodes TEXT, characteristics TEXT, buy_price INTEGER, cost INTEGER,
    image_count INTEGER NOT NULL DEFAULT 0, archived INTEGER NOT NULL DEFAULT 0,
    removed INTEGER NOT NULL DEFAULT 0, removed_at TEXT, updated TEXT, seen_run INTEGER,
    PRIMARY KEY (source, id));
CREATE INDEX IF NOT EXISTS offers_by_product ON offers (source, product_id);
CREATE TABLE IF NOT EXISTS price_types (
    source TEXT NOT NULL, id TEXT NOT NULL, name TEXT NOT NULL, external_code TEXT,
    position INTEGER NOT NULL, PRIMARY KEY (source, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS prices (
    source TEXT NOT NULL, offer_id TEXT NOT NULL, price_type_id TEXT NOT NULL,
    value INTEGER NOT NULL, PRIMARY KEY (source, offer_id, price_type_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS warehouses (
    source TEXT NOT NULL, id TEXT NOT NULL, name TEXT NOT NULL, external_code TEXT,
    archived INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (source, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS stock (
    source TEXT NOT NULL, offer_id TEXT NOT NULL, warehouse_id TEXT NOT NULL,
    stock REAL NOT NULL DEFAULT 0, reserve REAL NOT NULL DEFAULT 0,
    in_transit REAL NOT NULL DEFAULT 0, PRIMARY KEY (source, offer_id, warehouse_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS units (
    source TEXT NOT NULL, id TEXT NOT NULL, name TEXT NOT NULL, code TEXT, description TEXT,
    PRIMARY KEY (source, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS images (
    source TEXT NOT NULL, owner_id TEXT NOT NULL, position INTEGER NOT NULL,
    filename TEXT, title TEXT, size INTEGER, updated TEXT, href TEXT, permanent_href TEXT,
    PRIMARY KEY (source, owner_id, position)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS attributes (
    source TEXT NOT NULL, owner_id TEXT NOT NULL, attribute_id TEXT NOT NULL, name TEXT NOT NULL,
    type TEXT, value TEXT, PRIMARY KEY (source, owner_id, attribute_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS source_settings (
    source TEXT NOT NULL, key TEXT NOT NULL, value TEXT, PRIMARY KEY (source, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, source TEXT NOT NULL, kind TEXT NOT NULL,
    mode TEXT, status TEXT NOT NULL, started_at TEXT NOT NULL, finished_at TEXT,
    counts TEXT, requests INTEGER, throttled INTEGER, retries INTEGER, error TEXT,
    bookmark TEXT, pid INTEGER);
CREATE TABLE IF NOT EXISTS skipped (
    run_id INTEGER NOT NULL, source TEXT NOT NULL, item_type TEXT, item_id TEXT,
    name TEXT, reason TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS skipped_by_run ON skipped (run_id);
CREATE TABLE IF NOT EXISTS image_cache (
    source TEXT NOT NULL, image_id TEXT NOT NULL, owner_id TEXT, position INTEGER, updated TEXT,
    size INTEGER, local_file TEXT, permanent_href TEXT, error TEXT, fetched_at TEXT,
    PRIMARY KEY (source, image_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS exchange_sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, token_hash TEXT NOT NULL UNIQUE, client TEXT,
    started_at TEXT NOT NULL, finished_at TEXT, files TEXT, bytes INTEGER NOT NULL DEFAULT 0,
    result TEXT NOT NULL, error TEXT);
CREATE TABLE IF NOT EXISTS orders (
    number TEXT NOT NULL PRIMARY KEY, ordered_at TEXT NOT NULL, currency TEXT NOT NULL, total INTEGER NOT NULL,
    customer_name TEXT, customer_phone TEXT, customer_email TEXT, customer_address TEXT,
    company_name TEXT, company_inn TEXT, company_kpp TEXT, payment_method TEXT, paid INTEGER NOT NULL DEFAULT 0,
    shipping_method TEXT, comment TEXT,
    status TEXT, paid_at TEXT, shipped_at TEXT, posted INTEGER NOT NULL DEFAULT 0,
    deleted INTEGER NOT NULL DEFAULT 0, cancelled INTEGER NOT NULL DEFAULT 0,
    revision INTEGER NOT NULL, content_hash TEXT NOT NULL, exported_revision INTEGER, exported_at TEXT,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS orders_to_export ON orders (ordered_at, number)
    WHERE exported_revision IS NULL OR exported_revision < revision;
CREATE TABLE IF NOT EXISTS order_items (
    order_number TEXT NOT NULL, position INTEGER NOT NULL, kind TEXT NOT NULL, offer_id TEXT NOT NULL,
    name TEXT NOT NULL, quantity TEXT NOT NULL, price INTEGER NOT NULL, discount INTEGER NOT NULL DEFAULT 0,
    vat TEXT, amount INTEGER NOT NULL, PRIMARY KEY (order_number, position)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS order_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT, order_number TEXT NOT NULL, at TEXT NOT NULL, source TEXT NOT NULL,
    field TEXT NOT NULL, old TEXT, new TEXT, detail TEXT);
CREATE INDEX IF NOT EXISTS order_history_by_order ON order_history (order_number, id);
CREATE TABLE IF NOT EXISTS order_queries (
    id INTEGER PRIMARY KEY AUTOINCREMENT, session_id INTEGER NOT NULL, format TEXT NOT NULL,
    sent_at TEXT NOT NULL, confirmed_at TEXT, orders INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS order_queries_by_session ON order_queries (session_id, id);
CREATE TABLE IF NOT EXISTS order_query_items (
    query_id INTEGER NOT NULL, order_number TEXT NOT NULL, revision INTEGER NOT NULL,
    PRIMARY KEY (query_id, order_number)) WITHOUT ROWID;
"""
SCHEMA_NAMES = frozenset(re.findall(r"CREATE (?:TABLE|INDEX) IF NOT EXISTS (\w+)", SCHEMA))

# Order columns the shop owns (the API writes them) and those 1C / MoySklad owns (status documents).
ORDER_COLUMNS = ("ordered_at", "currency", "total", "customer_name", "customer_phone", "customer_email",
                 "customer_address", "company_name", "company_inn", "company_kpp", "payment_method", "paid",
                 "shipping_method", "comment")
ORDER_ITEM_COLUMNS = ("kind", "offer_id", "name", "quantity", "price", "discount", "vat", "amount")
ORDER_STATUS_COLUMNS = ("status", "paid_at", "shipped_at", "posted", "deleted", "cancelled")
ORDERS_SOURCE = "orders"

ATTRIBUTES = """(SELECT json_group_array(json_array(name, value)) FROM attributes
    WHERE source = :source AND owner_id = o.product_id)"""

# Pictures of one owner as JSON [[cached file, permanent link], ...] in position order.
PICTURES = """SELECT json_group_array(json_array(c.local_file, coalesce(c.permanent_href, i.permanent_href)))
    FROM (SELECT * FROM images WHERE source = :source AND owner_id = {owner} ORDER BY position) i
    LEFT JOIN image_cache c ON c.source = i.source
     AND c.image_id = substr(i.href, instr(i.href, '/download/') + 10)"""

# Keyed tables are WITHOUT ROWID: a feed looks each row up by its key, one B-tree search instead of two.
# `offers` keeps its rowid, which splits a feed into shares for parallel rendering.

# Tables whose rows a full run of a source marks removed when the source no longer returns them.
RECONCILED_TABLES = ("categories", "products", "offers")


class StoreError(Exception):
    """The catalog store cannot be opened or written."""


class StoreBusy(StoreError):
    """Another run holds the writer lock of this store."""


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class RunStats:
    """What a run did; saved in the runs table when the run ends, successful or not."""

    counts: dict = field(default_factory=dict)
    requests: int = 0
    throttled: int = 0
    retries: int = 0

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n


class CatalogStore:
    """Opens the store file, creates the schema and hands out run transactions."""

    def __init__(self, path: str | os.PathLike, wait_seconds: float = 30):
        """``wait_seconds``: how long a write waits for another run to commit (SQLite has one writer)."""
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), timeout=wait_seconds, check_same_thread=False)
            self.db = sqlite_utils.Database(conn)
            self.db.enable_wal()
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA journal_size_limit=67108864")  # a big run's WAL shrinks back after it
            self.db.execute("PRAGMA foreign_keys=OFF")
            if not self._schema_complete():
                # A connection that read the schema while another process was creating it would run the
                # CREATEs as a writer and wait for that process's whole first run: wait for its creating only.
                with open(self.path.with_name(f"{self.path.name}.schema.lock"), "a+") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX)
                    if not self._schema_complete():
                        self.db.conn.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the catalog store {self.path}: {exc}") from exc

    def close(self) -> None:
        self.db.close()

    def _schema_complete(self) -> bool:
        return SCHEMA_NAMES <= {name for (name,) in self.db.execute("SELECT name FROM sqlite_master")}

    # --- runs -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def run(self, source: str, kind: str, mode: str | None = None) -> Iterator["Run"]:
        """One writer run: an exclusive lock, a row in ``runs`` and one data transaction.

        The data is committed only when the block ends without an exception; the run row then
        says ``ok``. On an exception the data rolls back, the row says ``failed`` with the
        error, and the exception propagates.
        """
        with self._writer_lock(source):
            self._close_interrupted_runs(source)
            with self.db.atomic():
                run_id = self.db["runs"].insert(
                    {"source": source, "kind": kind, "mode": mode, "status": "running",
                     "started_at": utc_now(), "pid": os.getpid()}
                ).last_pk
            run = Run(self, run_id, source)
            try:
                with self._immediate():
                    yield run
                    self._finish(run, "ok", None)
            except BaseException as exc:
                with self.db.atomic():
                    self._finish(run, "interrupted" if _is_shutdown(exc) else "failed", _describe(exc))
                    self._save_skipped(run)
                raise

    @contextlib.contextmanager
    def _immediate(self):
        """A transaction that takes the write lock at once (waiting up to the busy timeout).

        A deferred one that reads first and writes later fails outright with "database is
        locked" when another writer committed in between; a run reads its bookmark before writing.
        """
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.rollback()
            raise
        self.db.commit()

    def _finish(self, run: "Run", status: str, error: str | None) -> None:
        self.db["runs"].update(
            run.id,
            {"status": status, "finished_at": utc_now(), "counts": json.dumps(run.stats.counts, ensure_ascii=False),
             "requests": run.stats.requests, "throttled": run.stats.throttled, "retries": run.stats.retries,
             "error": error, "mode": run.mode, "bookmark": run.bookmark},
        )
        if status == "ok":
            self._save_skipped(run)

    def _save_skipped(self, run: "Run") -> None:
        if run.skipped:
            self.db["skipped"].insert_all(run.skipped)
            run.skipped = []

    @contextlib.contextmanager
    def _writer_lock(self, source: str):
        lock_path = self.path.with_name(f"{self.path.name}.{source}.lock")
        with open(lock_path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                raise StoreBusy(f"another {source} run is in progress on {self.path} (process {holder})") from None
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

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
            self.db.execute(
                "UPDATE runs SET status='interrupted', finished_at=?, "
                "error='the run stopped without finishing (process killed or machine restarted); nothing of it was saved' "
                "WHERE source=? AND status='running'",
                [utc_now(), source],
            )

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
        """Runs, failures, API requests, 429s and retries over every recorded run (for metrics)."""
        row = self.db.execute(
            "SELECT count(*), coalesce(sum(status IN ('failed', 'interrupted')), 0), coalesce(sum(requests), 0), "
            "coalesce(sum(throttled), 0), coalesce(sum(retries), 0) FROM runs WHERE source = ? AND kind = ?",
            [source, kind]).fetchone()
        return dict(zip(("runs", "failed", "requests", "throttled", "retries"), row))

    def skipped_items(self, run_id: int) -> list[dict]:
        return list(self.db.query("SELECT item_type, item_id, name, reason FROM skipped WHERE run_id = ?", [run_id]))

    # --- CommerceML exchange sessions ---------------------------------------------------------

    def open_exchange_session(self, token_hash: str, client: str | None) -> dict:
        """Log a new session; the token itself is never stored, only its hash."""
        with self.db.atomic():
            session_id = self.db["exchange_sessions"].insert(
                {"token_hash": token_hash, "client": client, "started_at": utc_now(), "result": "open"}
            ).last_pk
        return self.exchange_session(session_id)

    def exchange_session(self, session_id: int) -> dict | None:
        rows = list(self.db.query("SELECT * FROM exchange_sessions WHERE id = ?", [session_id]))
        return _decode_session(rows[0]) if rows else None

    def exchange_session_by_token(self, token_hash: str) -> dict | None:
        rows = list(self.db.query("SELECT * FROM exchange_sessions WHERE token_hash = ?", [token_hash]))
        return _decode_session(rows[0]) if rows else None

    def update_exchange_session(self, session_id: int, **values) -> None:
        """Record progress or the outcome of a session (files as a list, saved as JSON)."""
        if "files" in values:
            values["files"] = json.dumps(values["files"], ensure_ascii=False)
        with self.db.atomic():
            self.db["exchange_sessions"].update(session_id, values)

    def exchange_totals(self) -> dict:
        """Sessions, failed sessions and bytes received over the whole log (for metrics)."""
        row = self.db.execute("SELECT count(*), coalesce(sum(result = 'failed'), 0), coalesce(sum(bytes), 0) "
                              "FROM exchange_sessions").fetchone()
        return dict(zip(("sessions", "failed", "bytes"), row))

    def exchange_sessions(self, limit: int = 20) -> list[dict]:
        """The latest sessions for the health page, newest first, without their token hashes."""
        rows = self.db.query("SELECT * FROM exchange_sessions ORDER BY id DESC LIMIT ?", [limit])
        return [{k: v for k, v in _decode_session(r).items() if k != "token_hash"} for r in rows]

    # --- orders ---------------------------------------------------------------------------------

    def save_order(self, number: str, order: dict, items: list[dict], content_hash: str) -> str:
        """Create or update an order from the shop in one transaction: 'created', 'updated' or 'unchanged'.

        The same content again changes nothing (a retried request is harmless). Changed content is a
        new revision, which the next ``type=sale&mode=query`` sends again; the statuses 1C reported
        stay as they are. ``items`` includes the delivery line (kind ``delivery``).
        """
        with self._immediate():
            row = self._order_row(number)
            now = utc_now()
            # no date given: the time the order first arrived (shop wall-clock), kept on later updates
            order = {**order, "ordered_at": order["ordered_at"] or (row["ordered_at"] if row else
                                                                     dt.datetime.now().isoformat(timespec="seconds"))}
            if row is None:
                self.db.execute(
                    f"INSERT INTO orders (number, {', '.join(ORDER_COLUMNS)}, revision, content_hash, created_at, updated_at) "
                    f"VALUES (?, {', '.join('?' * len(ORDER_COLUMNS))}, 1, ?, ?, ?)",
                    [number, *(order[c] for c in ORDER_COLUMNS), content_hash, now, now])
                self._replace_order_items(number, items)
                self._order_history(number, now, "api", "created", None, "1", "revision 1")
                return "created"
            if row["content_hash"] == content_hash:
                return "unchanged"
            old_items = self._order_items(number)
            changed = [c for c in ORDER_COLUMNS if row[c] != order[c]]
            if [{c: item[c] for c in ORDER_ITEM_COLUMNS} for item in old_items] != \
                    [{c: item[c] for c in ORDER_ITEM_COLUMNS} for item in items]:
                changed.append("items")
            revision = row["revision"] + 1
            self.db.execute(
                f"UPDATE orders SET {', '.join(c + ' = ?' for c in ORDER_COLUMNS)}, revision = ?, content_hash = ?, "
                "updated_at = ? WHERE number = ?", [*(order[c] for c in ORDER_COLUMNS), revision, content_hash, now, number])
            self._replace_order_items(number, items)
            self._order_history(number, now, "api", "updated", str(row["revision"]), str(revision),
                                f"revision {revision}: {', '.join(changed) or 'formatting'}")
            return "updated"

    def order(self, number: str) -> dict | None:
        """One order with its lines and its whole history, oldest first."""
        row = self._order_row(number)
        if row is None:
            return None
        row["items"] = self._order_items(number)
        row["history"] = list(self.db.query(
            "SELECT at, source, field, old, new, detail FROM order_history WHERE order_number = ? ORDER BY id", [number]))
        return row

    def start_order_query(self, session_id: int, fmt: str, limit: int) -> tuple[int, list[dict]]:
        """The orders 1C has not confirmed yet (oldest first), recorded as this session's latest query."""
        with self._immediate():
            rows = list(self.db.query(
                "SELECT * FROM orders WHERE exported_revision IS NULL OR exported_revision < revision "
                "ORDER BY ordered_at, number LIMIT ?", [limit]))
            query_id = self.db.execute(
                "INSERT INTO order_queries (session_id, format, sent_at, orders) VALUES (?, ?, ?, ?)",
                [session_id, fmt, utc_now(), len(rows)]).lastrowid
            self.db.conn.executemany("INSERT INTO order_query_items (query_id, order_number, revision) VALUES (?, ?, ?)",
                                     [(query_id, row["number"], row["revision"]) for row in rows])
        for row in rows:
            row["items"] = self._order_items(row["number"])
        return query_id, rows

    def confirm_order_query(self, session_id: int) -> int | None:
        """mode=success: the orders of the session's latest query, at the revision sent, become exported.

        Returns how many orders that query sent, or None when the session made no query. Orders
        created or changed after the query are not touched: they go in the next one.
        """
        with self._immediate():
            rows = list(self.db.query("SELECT * FROM order_queries WHERE session_id = ? ORDER BY id DESC LIMIT 1",
                                      [session_id]))
            if not rows:
                return None
            query = rows[0]
            if query["confirmed_at"]:
                return query["orders"]
            now = utc_now()
            sent = list(self.db.query("SELECT order_number, revision FROM order_query_items WHERE query_id = ?",
                                      [query["id"]]))
            for item in sent:
                marked = self.db.execute(
                    "UPDATE orders SET exported_revision = ?, exported_at = ? WHERE number = ? "
                    "AND (exported_revision IS NULL OR exported_revision < ?)",
                    [item["revision"], now, item["order_number"], item["revision"]]).rowcount
                if marked:
                    self._order_history(item["order_number"], now, "exchange", "exported", None, str(item["revision"]),
                                        f"session {session_id}, query {query['id']}")
            self.db.execute("UPDATE order_queries SET confirmed_at = ? WHERE id = ?", [now, query["id"]])
            return query["orders"]

    def apply_order_changes(self, updates: list[dict], detail: str) -> dict:
        """Apply one status document as one run: every change is recorded in the history, or none is.

        ``updates``: ``{"ids": [Ид, Номер], "number": Номер, "values": {column: value}}`` per document,
        values only for the columns it states. Unknown orders are skipped with the reason recorded.
        """
        with self.run(ORDERS_SOURCE, "status") as run:
            now = utc_now()
            for update in updates:
                row = next(filter(None, (self._order_row(n) for n in dict.fromkeys(update["ids"]) if n)), None)
                if row is None:
                    run.skip("order", update["number"] or None, None,
                             f"заказ № {update['number'] or '(без номера)'} не найден на сайте")
                    run.stats.add("unknown")
                    continue
                unknown = set(update["values"]) - set(ORDER_STATUS_COLUMNS)
                if unknown:  # a programming error: columns are named in the SQL below
                    raise ValueError(f"not an order status column: {sorted(unknown)}")
                changed = {c: v for c, v in update["values"].items() if row[c] != v}
                run.stats.add("documents")
                if not changed:
                    run.stats.add("unchanged")
                    continue
                self.db.execute(f"UPDATE orders SET {', '.join(c + ' = ?' for c in changed)}, updated_at = ? WHERE number = ?",
                                [*changed.values(), now, row["number"]])
                for column, value in changed.items():
                    self._order_history(row["number"], now, "exchange", column, _history_value(column, row[column]),
                                        _history_value(column, value), detail)
                run.stats.add("orders_changed")
                run.stats.add("changes", len(changed))
                row.update(changed)  # a second document for the same order compares with this one
            skipped = [item["reason"] for item in run.skipped]
        return {**run.stats.counts, "run_id": run.id, "skipped": skipped}

    def orders_summary(self) -> dict:
        """For the health page: orders in all, waiting for 1C to confirm them, and the last query."""
        total, waiting, oldest = self.db.execute(
            "SELECT count(*), coalesce(sum(exported_revision IS NULL OR exported_revision < revision), 0), "
            "min(CASE WHEN exported_revision IS NULL OR exported_revision < revision THEN created_at END) FROM orders").fetchone()
        last = self.db.execute("SELECT sent_at, confirmed_at, orders FROM order_queries ORDER BY id DESC LIMIT 1").fetchone()
        return {"orders": total, "waiting_for_1c": waiting, "oldest_waiting_since": oldest,
                "last_query": dict(zip(("sent_at", "confirmed_at", "orders"), last)) if last else None}

    def _order_row(self, number: str) -> dict | None:
        rows = list(self.db.query("SELECT * FROM orders WHERE number = ?", [number]))
        return rows[0] if rows else None

    def _order_items(self, number: str) -> list[dict]:
        return list(self.db.query(f"SELECT position, {', '.join(ORDER_ITEM_COLUMNS)} FROM order_items "
                                  "WHERE order_number = ? ORDER BY position", [number]))

    def _replace_order_items(self, number: str, items: list[dict]) -> None:
        self.db.execute("DELETE FROM order_items WHERE order_number = ?", [number])
        self.db.conn.executemany(
            f"INSERT INTO order_items (order_number, position, {', '.join(ORDER_ITEM_COLUMNS)}) "
            f"VALUES (?, ?, {', '.join('?' * len(ORDER_ITEM_COLUMNS))})",
            [(number, position, *(item[c] for c in ORDER_ITEM_COLUMNS)) for position, item in enumerate(items, 1)])

    def _order_history(self, number: str, at: str, source: str, field_name: str, old: str | None, new: str | None,
                       detail: str | None) -> None:
        self.db.execute("INSERT INTO order_history (order_number, at, source, field, old, new, detail) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)", [number, at, source, field_name, old, new, detail])

    # --- reading ----------------------------------------------------------------------------

    def setting(self, source: str, key: str) -> str | None:
        rows = list(self.db.query("SELECT value FROM source_settings WHERE source=? AND key=?", [source, key]))
        return rows[0]["value"] if rows else None

    def counts(self, source: str) -> dict:
        """How many live (not removed) rows each table holds for a source."""
        result = {}
        for table in ("categories", "products", "offers"):
            result[table] = self.db.execute(
                f"SELECT count(*) FROM {table} WHERE source=? AND removed=0", [source]
            ).fetchone()[0]
        for table in ("price_types", "prices", "warehouses", "stock", "units", "images", "attributes"):
            result[table] = self.db.execute(f"SELECT count(*) FROM {table} WHERE source=?", [source]).fetchone()[0]
        return result


class CatalogReader:
    """A read-only connection for building feeds: one consistent snapshot, never blocks writers."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        uri = self.path.resolve().as_uri() + "?mode=ro"
        try:
            self.conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the catalog store {path} for reading: {exc}") from exc
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("BEGIN")  # one snapshot for the whole feed

    def close(self) -> None:
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def offer_count(self, source: str) -> int:
        return self.conn.execute("SELECT count(*) FROM offers WHERE source = ?", [source]).fetchone()[0]

    def setting(self, source: str, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM source_settings WHERE source=? AND key=?", [source, key]).fetchone()
        return row[0] if row else None

    def price_types(self, source: str) -> list[sqlite3.Row]:
        return self.conn.execute("SELECT * FROM price_types WHERE source=? ORDER BY position", [source]).fetchall()

    def warehouses(self, source: str) -> list[sqlite3.Row]:
        return self.conn.execute("SELECT * FROM warehouses WHERE source=? ORDER BY name", [source]).fetchall()

    def units(self, source: str) -> dict[str, sqlite3.Row]:
        return {r["id"]: r for r in self.conn.execute("SELECT * FROM units WHERE source=?", [source])}

    def categories(self, source: str) -> list[sqlite3.Row]:
        return self.conn.execute(
            "SELECT id, parent_id, name, archived FROM categories WHERE source=? AND removed=0 ORDER BY name, id", [source]
        ).fetchall()

    def offers(self, source: str, *, price_type_id: str | None, warehouse_ids: list[str] | None,
               include_bundles: bool, removed_before: str, with_attributes: bool = True,
               with_pictures: bool = True, with_product_buy_price: bool = True, part: int = 0,
               parts: int = 1) -> Iterator[dict]:
        """Every offer a feed may publish, joined with its product card, price, stock and attributes.

        A product with variants is left out (its variants are the offers), unless all of them were
        removed before ``removed_before``. Rows come grouped by product.
        """
        params = {"source": source, "price_type": price_type_id, "removed_before": removed_before}
        stock_filter = ""
        if warehouse_ids is not None:
            names = [f"w{i}" for i in range(len(warehouse_ids))]
            params.update(zip(names, warehouse_ids))
            stock_filter = f" AND warehouse_id IN ({', '.join(':' + n for n in names)})"
        bundles = "" if include_bundles else " AND o.kind != 'bundle'"
        if parts > 1:  # one share of the catalog for one of several rendering processes
            bundles += " AND o.rowid % :parts = :part"
            params.update(parts=parts, part=part)
        sql = f"""
            SELECT o.id, o.product_id, o.kind, o.name, o.code, o.article, o.external_code, o.barcodes,
                   o.characteristics, o.buy_price, o.cost, o.archived, o.removed, o.removed_at, o.updated,
                   p.name AS product_name, p.category_id, p.unit_id, p.vat, p.vat_enabled, p.weight,
                   p.code AS product_code, p.external_code AS product_external_code,
                   p.article AS product_article, p.archived AS product_archived, p.removed AS product_removed,
                   p.removed_at AS product_removed_at, p.updated AS product_updated, p.id IS NOT NULL AS has_product,
                   {"po.buy_price" if with_product_buy_price else "NULL"} AS product_buy_price,
                   st.stock AS stock_total, st.reserve AS reserve_total, st.in_transit AS in_transit_total,
                   (SELECT value FROM prices WHERE source = :source AND offer_id = o.id
                       AND price_type_id = :price_type) AS own_price,
                   (SELECT value FROM prices WHERE source = :source AND offer_id = o.product_id
                       AND price_type_id = :price_type) AS product_price,
                   {ATTRIBUTES if with_attributes else "NULL"} AS attributes_json,
                   {"(" + PICTURES.format(owner="o.id") + ")" if with_pictures else "NULL"} AS pictures_json,
                   {"(" + PICTURES.format(owner="o.product_id") + ")" if with_pictures else "NULL"} AS product_pictures_json
            FROM offers o
            LEFT JOIN products p ON p.source = :source AND p.id = o.product_id
            {"LEFT JOIN offers po ON po.source = :source AND po.id = o.product_id" if with_product_buy_price else ""}
            LEFT JOIN (SELECT offer_id, sum(stock) AS stock, sum(reserve) AS reserve, sum(in_transit) AS in_transit
                       FROM stock WHERE source = :source{stock_filter} GROUP BY offer_id) st ON st.offer_id = o.id
            WHERE o.source = :source{bundles}
              AND NOT (o.kind = 'product' AND EXISTS (
                    SELECT 1 FROM offers v WHERE v.source = :source AND v.product_id = o.id AND v.kind = 'variant'
                      AND (v.removed = 0 OR v.removed_at >= :removed_before)))
            ORDER BY o.product_id
        """
        cursor = self.conn.cursor()
        cursor.row_factory = None  # plain tuples turned into dicts: sqlite3.Row looks names up one by one
        cursor.execute(sql, params)
        names = [d[0] for d in cursor.description]
        return (dict(zip(names, row)) for row in cursor)


class Run:
    """Writes of one run; every method streams its records and touches only this source's rows."""

    def __init__(self, store: CatalogStore, run_id: int, source: str):
        self.store = store
        self.db = store.db
        self.id = run_id
        self.source = source
        self.stats = RunStats()
        self.skipped: list[dict] = []
        self.mode: str | None = None
        self.bookmark: str | None = None

    def skip(self, item_type: str, item_id: str | None, name: str | None, reason: str) -> None:
        """Record an item left out of the store and why, for the operator."""
        self.skipped.append({"run_id": self.id, "source": self.source, "item_type": item_type,
                             "item_id": item_id, "name": name, "reason": reason})
        self.stats.add("skipped")
        if item_id:  # keep its last good version: a full run must not take it for deleted
            for table in RECONCILED_TABLES:
                self.db.execute(f"UPDATE {table} SET seen_run = ? WHERE source = ? AND id = ?", [self.id, self.source, item_id])

    def set_setting(self, key: str, value) -> None:
        self.upsert("source_settings", [{"key": key, "value": value if isinstance(value, str) or value is None else json.dumps(value, ensure_ascii=False)}], ("source", "key"))

    def replace_all(self, table: str, rows: Iterable[dict], pk: tuple[str, ...]) -> int:
        """Replace every row of a small reference table (price types, warehouses, units)."""
        self.db.execute(f"DELETE FROM {table} WHERE source = ?", [self.source])
        return self.upsert(table, rows, pk)

    def upsert_categories(self, rows: Iterable[dict]) -> int:
        return self.upsert("categories", self._seen(rows), ("source", "id"))

    def upsert_products(self, rows: Iterable[dict]) -> int:
        return self.upsert("products", self._seen(rows), ("source", "id"))

    def upsert_offers(self, rows: Iterable[dict]) -> int:
        return self.upsert("offers", self._seen(rows), ("source", "id"))

    def replace_children(self, table: str, owner_column: str, owner_ids: list[str], rows: Iterable[dict], pk: tuple[str, ...]) -> int:
        """Replace the prices / attributes / images of the given owners with ``rows``."""
        for chunk in chunks(owner_ids, 500):
            marks = ",".join("?" * len(chunk))
            self.db.execute(f"DELETE FROM {table} WHERE source = ? AND {owner_column} IN ({marks})", [self.source, *chunk])
        return self.upsert(table, rows, pk)

    def clear(self, table: str) -> None:
        self.db.execute(f"DELETE FROM {table} WHERE source = ?", [self.source])

    def merge_stock(self, rows: Iterable[tuple[str, str, float]], column: str) -> int:
        """Set one stock column (stock, reserve, in_transit) per (offer, warehouse), adding rows as needed."""
        if column not in ("stock", "reserve", "in_transit"):
            raise ValueError(column)
        sql = (f"INSERT INTO stock (source, offer_id, warehouse_id, {column}) VALUES (?, ?, ?, ?) "
               f"ON CONFLICT (source, offer_id, warehouse_id) DO UPDATE SET {column} = excluded.{column}")
        count = 0
        for chunk in chunks(((self.source, o, w, q) for o, w, q in rows), 2000):
            self.db.conn.executemany(sql, chunk)
            count += len(chunk)
        return count

    def update_offers(self, column: str, values: Iterable[tuple[str, object]]) -> None:
        """Set one column of existing offers, e.g. the unit cost from the stock report."""
        sql = f"UPDATE offers SET {column} = ? WHERE source = ? AND id = ?"
        for chunk in chunks(((v, self.source, i) for i, v in values), 2000):
            self.db.conn.executemany(sql, chunk)

    def mark_unseen_removed(self, tables: tuple[str, ...] = RECONCILED_TABLES,
                            offer_kinds: tuple[str, ...] | None = None) -> dict[str, int]:
        """After a full run: what the source no longer returns is marked removed, never deleted.

        ``tables`` and ``offer_kinds`` narrow it to what the run was complete for: a CommerceML
        offers file lists every variant but no categories or product cards.
        """
        removed = {}
        now = utc_now()
        for table in tables:
            kinds = offer_kinds if table == "offers" and offer_kinds else ()
            cursor = self.db.execute(
                f"UPDATE {table} SET removed = 1, removed_at = ? "
                f"WHERE source = ? AND removed = 0 AND (seen_run IS NULL OR seen_run != ?)"
                + (f" AND kind IN ({', '.join('?' * len(kinds))})" if kinds else ""),
                [now, self.source, self.id, *kinds],
            )
            removed[table] = cursor.rowcount
        return removed

    def seen_runs(self, table: str, ids: list[str]) -> dict[str, int | None]:
        """The run that last wrote each of ``ids`` that the table holds (write-once rules of a run)."""
        seen = {}
        for chunk in chunks(ids, 500):
            marks = ",".join("?" * len(chunk))
            seen.update(self.db.execute(f"SELECT id, seen_run FROM {table} WHERE source = ? AND id IN ({marks})",
                                        [self.source, *chunk]).fetchall())
        return seen

    def mark_seen(self, table: str, ids: list[str]) -> None:
        """Rows this run refers to without rewriting them count as seen (reconciliation, deactivation)."""
        for chunk in chunks(ids, 500):
            marks = ",".join("?" * len(chunk))
            self.db.execute(f"UPDATE {table} SET seen_run = ? WHERE source = ? AND id IN ({marks})",
                            [self.id, self.source, *chunk])

    def first_run_since(self, kind: str, since: str) -> int | None:
        """The first successful run of this source and kind started at or after ``since`` (UTC, as utc_now writes it)."""
        return self.db.execute("SELECT min(id) FROM runs WHERE source = ? AND kind = ? AND status = 'ok' AND started_at >= ?",
                               [self.source, kind, since]).fetchone()[0]

    def archive_unseen(self, tables: tuple[str, ...], since_run: int) -> dict[str, int]:
        """Archive (not remove) live rows that no run from ``since_run`` on has seen."""
        archived = {}
        now = utc_now()
        for table in tables:
            archived[table] = self.db.execute(
                f"UPDATE {table} SET archived = 1, updated = ? WHERE source = ? AND removed = 0 AND archived = 0 "
                f"AND (seen_run IS NULL OR seen_run < ?)", [now, self.source, since_run]).rowcount
        return archived

    def _seen(self, rows: Iterable[dict]) -> Iterator[dict]:
        for row in rows:
            row["seen_run"] = self.id
            row.setdefault("removed", 0)
            row.setdefault("removed_at", None)
            yield row

    def upsert(self, table: str, rows: Iterable[dict], pk: tuple[str, ...]) -> int:
        """Insert or update rows of this source, streaming them in chunks."""
        count = 0
        source = self.source
        statements: dict[tuple, tuple] = {}  # per column set: the SQL and a row → parameters getter
        for chunk in chunks(rows, UPSERT_CHUNK):
            first = chunk[0]
            columns = tuple(first) if "source" in first else (*first, "source")
            try:
                sql, values = statements[columns]
            except KeyError:
                sql, values = statements[columns] = _upsert_statement(table, columns, pk)
            try:
                params = [(source, *values(row)) for row in chunk]
            except KeyError:  # a row lacks a column of the first one: it gets NULL there
                params = [(source, *[row.get(c) for c in columns if c != "source"]) for row in chunk]
            self.db.conn.executemany(sql, params)
            count += len(chunk)
        return count


UPSERT_CHUNK = 2000


def _upsert_statement(table: str, columns: tuple[str, ...], pk: tuple[str, ...]):
    """INSERT … ON CONFLICT for these columns, and a getter of a row's values (``source`` bound first)."""
    others = [c for c in columns if c != "source"]
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in pk)
    sql = (f"INSERT INTO {table} (source{''.join(', ' + c for c in others)}) VALUES ({', '.join('?' * (len(others) + 1))}) "
           f"ON CONFLICT ({', '.join(pk)}) DO " + (f"UPDATE SET {updates}" if updates else "NOTHING"))
    if not others:
        return sql, lambda row: ()
    if len(others) == 1:
        getter = operator.itemgetter(others[0])
        return sql, lambda row: (getter(row),)
    return sql, operator.itemgetter(*others)


def money(kopecks: int) -> str:
    """Kopecks (as the store keeps prices) as roubles with two decimals, as ICML and CommerceML write them."""
    return f"{kopecks // 100}.{kopecks % 100:02d}"


def chunks(items: Iterable, size: int) -> Iterator[list]:
    if isinstance(items, list):  # slices, without a Python step per item
        for start in range(0, len(items), size):
            yield items[start:start + size]
        return
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _is_shutdown(exc: BaseException) -> bool:
    """The process is stopping (Ctrl+C, or a service restart caught the run mid-way)."""
    return isinstance(exc, KeyboardInterrupt) or (isinstance(exc, RuntimeError) and "interpreter shutdown" in str(exc))


def _describe(exc: BaseException) -> str:
    if _is_shutdown(exc):
        return "the run was interrupted because the service was stopping; nothing of it was saved, the next run redoes it"
    return str(exc) or type(exc).__name__


def _decode_run(row: dict) -> dict:
    row = dict(row)
    row["counts"] = json.loads(row["counts"]) if row.get("counts") else {}
    return row


ORDER_FLAGS = ("paid", "posted", "deleted", "cancelled")


def _history_value(column: str, value) -> str | None:
    """A status value as the history shows it: flags as true/false, the rest as text."""
    if value is None:
        return None
    return ("true" if value else "false") if column in ORDER_FLAGS else str(value)


def _decode_session(row: dict) -> dict:
    row = dict(row)
    row["files"] = json.loads(row["files"]) if row.get("files") else []
    return row
