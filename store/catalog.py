"""The catalog store: one SQLite file shared by every source (MoySklad sync, CommerceML exchange).

Tables are source-neutral: each row carries the ``source`` it came from, so a full MoySklad sync
only reconciles what MoySklad owns. Money is kept in kopecks (integers), quantities as reals.
Writers work inside :meth:`CatalogStore.run`, one transaction per run: a run that fails leaves
the previous state untouched, and readers (WAL) keep seeing that state until the commit.
"""

from __future__ import annotations

import contextlib
import functools
import json
import operator
import os
import sqlite3
from collections.abc import Iterable, Iterator
from itertools import chain
from pathlib import Path
from typing import NamedTuple

import apsw
import msgspec

from core.clock import utc_now
from store.bundles import BUNDLES_SCHEMA, COMPONENTS
from store.database import Database, LibraryClaim, StoreError
from store.images import IMAGE_CACHE_SCHEMA, ImageCacheRows
from store.orders import ORDERS_ADDED_COLUMNS, ORDERS_SCHEMA, OrderBook
from store.retailcrm import RETAILCRM_SCHEMA, PushedValues
from store.runs import RUNS_ADDED_COLUMNS, RUNS_SCHEMA, Run, RunLog

READER_WAIT_MS = 5000  # opening a store another process is creating waits for it, as sqlite3's default timeout

CATALOG_SCHEMA = """
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
    removed INTEGER NOT NULL DEFAULT 0, removed_at TEXT, updated TEXT, seen_run INTEGER, tracking_type TEXT,
    from_offer INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (source, id)) WITHOUT ROWID;
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
    position INTEGER NOT NULL, currency TEXT, PRIMARY KEY (source, id)) WITHOUT ROWID;
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
"""
# An offer's attributes: its product's, then its own (a 1C characteristic's property values), which win by name.
ATTRIBUTES = """(SELECT json_group_array(json_array(name, value)) FROM (
    SELECT name, value, 0 AS own FROM attributes WHERE source = :source AND owner_id = o.product_id
    UNION ALL
    SELECT name, value, 1 FROM attributes WHERE source = :source AND owner_id = o.id AND o.id != o.product_id
    ORDER BY own))"""

# Pictures of one owner as JSON [[cached file, permanent link], ...] in position order.
PICTURES = """SELECT json_group_array(json_array(c.local_file, coalesce(c.permanent_href, i.permanent_href)))
    FROM (SELECT * FROM images WHERE source = :source AND owner_id = {owner} ORDER BY position) i
    LEFT JOIN image_cache c ON c.source = i.source
     AND c.image_id = substr(i.href, instr(i.href, '/download/') + 10)"""

# What a feed's quantity rule counts of an offer's stock rows (free: in stock less reserved; quantity: the
# same plus goods in transit), summed over its warehouses; one lookup of the offer's rows.
STOCK_COUNTED = {"stock": "sum(stock)", "free": "sum(stock) - sum(reserve)",
                 "quantity": "sum(stock) - sum(reserve) + sum(in_transit)"}

# Keyed tables are WITHOUT ROWID: a feed looks each row up by its key, one B-tree search instead of two.
# `offers` keeps its rowid, which splits a feed into shares for parallel rendering.

# Tables whose rows a full run of a source marks removed when the source no longer returns them.
RECONCILED_TABLES = ("categories", "products", "offers")


class CatalogStore(Database, RunLog, OrderBook, ImageCacheRows, PushedValues):
    """The catalog, the runs that write it, the orders, the picture cache and what was pushed to
    retailCRM: one file, one connection.

    Open it with :func:`open_catalog` in a ``with`` block.
    """

    SCHEMA = CATALOG_SCHEMA + RUNS_SCHEMA + IMAGE_CACHE_SCHEMA + ORDERS_SCHEMA + BUNDLES_SCHEMA + RETAILCRM_SCHEMA
    # products.tracking_type (MoySklad trackingType: mandatory marking) came after the table
    ADDED_COLUMNS = (("products", "tracking_type", "TEXT"), ("products", "from_offer", "INTEGER NOT NULL DEFAULT 0"),
                     ("price_types", "currency", "TEXT"), *ORDERS_ADDED_COLUMNS, *RUNS_ADDED_COLUMNS)

    @property
    def run_class(self):
        return CatalogRun

    def fill_new_schema(self, new_tables: set[str], added_columns: set[tuple[str, str]]) -> None:
        """What a store written by an earlier version lacks: see :meth:`RunLog.fill_new_schema`; and a store from
        before products.from_offer is also from before a unit cost of 0 on a good with nothing in stock counted as
        none (moysklad.transform): such costs become none, as the sync now stores them, not at the next whole
        stock report (published, a 0 overwrites retailCRM's purchase price). A store from before
        products.tracking_type has none: its next sync has no bookmark, so it reads the catalog whole (an
        incremental one would leave unchanged goods unmarked until a full sync, never with full_sync_hours 0)."""
        super().fill_new_schema(new_tables, added_columns)
        if ("products", "tracking_type") in added_columns:
            with self.db.atomic():
                self.db.execute("DELETE FROM source_settings WHERE key = 'bookmark'")
        if ("products", "from_offer") in added_columns:
            with self.db.atomic():
                self.db.execute("UPDATE offers SET cost = NULL WHERE cost = 0 AND (SELECT coalesce(sum(stock), 0) "
                                "FROM stock WHERE stock.source = offers.source AND stock.offer_id = offers.id) <= 0")

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


def open_catalog(path: str | os.PathLike, wait_seconds: float = 30) -> CatalogStore:
    """The catalog store at ``path``, for a ``with`` block."""
    return CatalogStore(path, wait_seconds)


class OfferRow(NamedTuple):
    """One offer as a feed reads it: the offer, its product card, its price and stock (over the feed's
    warehouses) and, as JSON, its bundle components, attributes and pictures. Money in kopecks."""

    id: str
    product_id: str
    kind: str  # product, variant, service or bundle
    name: str
    code: str | None
    article: str | None
    external_code: str | None
    barcodes: str | None  # JSON [{"ean13": "..."}, ...]
    characteristics: str | None  # JSON [{"name": ..., "value": ...}, ...]
    buy_price: int | None  # the offer's own, else (when asked for, or its own is 0: unset) its product's
    cost: int | None
    archived: int
    removed: int
    removed_at: str | None
    updated: str | None
    product_name: str | None
    category_id: str | None
    unit_id: str | None
    vat: float | None
    vat_enabled: int | None
    weight: float | None
    product_code: str | None
    product_external_code: str | None
    product_article: str | None
    product_archived: int | None
    product_removed: int | None
    product_removed_at: str | None
    product_updated: str | None
    tracking_type: str | None
    components_json: str | None  # [[quantity in the bundle, kind, unavailable, stock counted], ...]
    stock_counted: float | None  # over the feed's warehouses, as its quantity rule counts (STOCK_COUNTED)
    # of the feed's price type: the offer's own, else its product's. MoySklad lists a variant's price types it has no
    # price of as 0 (the vendor's variant_get.json), and a variant without one sells at its product's (DOMAIN.md)
    price: int | None
    attributes_json: str | None  # [[name, value], ...] of the product
    pictures_json: str | None  # [[cached file, permanent link], ...]
    product_pictures_json: str | None

    @property
    def has_product(self) -> bool:
        """Whether the store holds the offer's product card (whose name is never NULL)."""
        return self.product_name is not None


# The offers query with each row packed into one JSON array in OfferRow's order (SQLite flattens the subquery into
# the same plan). The SQLite apsw brings (3.53.4 on: see pyproject.toml) writes a float's JSON so that it reads back
# as the same float; tests/store checks it.
PACKED_OFFERS = (
    "SELECT id, product_id, category_id, "
    "NOT (removed OR archived OR coalesce(product_removed, 0) OR coalesce(product_archived, 0)), "
    f"CAST(json_array({', '.join(OfferRow._fields)}) AS BLOB) FROM ({{offers}}) ORDER BY product_id")
_from_json = msgspec.json.Decoder().decode


def unpack_offer(packed: bytes) -> OfferRow:
    """An offer packed by :meth:`RenderReader.packed_offers`; ValueError for a value a feed cannot
    publish (an infinite number, which the writers refuse: JSON cannot hold one)."""
    try:
        return OfferRow._make(_from_json(packed))
    except msgspec.DecodeError as exc:
        raise ValueError(f"the store holds a value of this offer that is no finite number ({exc})") from None


class CatalogReader:
    """A read-only connection for building feeds: one consistent snapshot, never blocks writers.

    Through :mod:`sqlite3`, as every other store this process opens: see :class:`store.database.LibraryClaim`
    for why a process opens a store through one SQLite library. A rendering process reads it through
    apsw instead (:class:`RenderReader`).
    """

    library = "sqlite3"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.conn = None
        self._claim = LibraryClaim(self.path, self.library)
        try:
            self.conn = self._connect(self.path.resolve().as_uri() + "?mode=ro")
            self.conn.execute("BEGIN")  # one snapshot for the whole feed
        except BaseException as exc:
            self.close()
            if isinstance(exc, (sqlite3.Error, apsw.Error)):
                raise StoreError(f"cannot open the catalog store {path} for reading: {exc}") from exc
            raise

    def _connect(self, uri: str):
        return sqlite3.connect(uri, uri=True, timeout=READER_WAIT_MS / 1000, check_same_thread=False)

    def close(self) -> None:
        conn, self.conn = self.conn, None
        self._claim.close(conn)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _rows(self, sql: str, params: list) -> list[dict]:
        """A small query's rows as dicts by column name."""
        cursor = self.conn.execute(sql, params)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor]

    def _value(self, sql: str, params: list):
        row = self.conn.execute(sql, params).fetchone()
        return row[0] if row else None

    def offer_count(self, source: str) -> int:
        return self._value("SELECT count(*) FROM offers WHERE source = ?", [source])

    def setting(self, source: str, key: str) -> str | None:
        return self._value("SELECT value FROM source_settings WHERE source=? AND key=?", [source, key])

    def price_types(self, source: str) -> list[dict]:
        return self._rows("SELECT * FROM price_types WHERE source=? ORDER BY position", [source])

    def warehouses(self, source: str) -> list[dict]:
        return self._rows("SELECT * FROM warehouses WHERE source=? ORDER BY name", [source])

    def units(self, source: str) -> dict[str, dict]:
        return {r["id"]: r for r in self._rows("SELECT * FROM units WHERE source=?", [source])}

    def bundle_ids(self, source: str) -> list[str]:
        return [row[0] for row in self.conn.execute("SELECT id FROM offers WHERE source = ? AND kind = 'bundle'", [source])]

    def categories(self, source: str) -> list[dict]:
        return self._rows(
            "SELECT id, parent_id, name, archived FROM categories WHERE source=? AND removed=0 ORDER BY name, id", [source])

    def offers(self, source: str, **query) -> Iterator[OfferRow]:
        """Every offer a feed may publish, joined with its product card, price, stock and attributes
        (``query``: see :meth:`_offers_query`)."""
        cursor = self.conn.execute(*self._offers_query(source, **query))
        assert tuple(d[0] for d in cursor.description) == OfferRow._fields, "the SELECT and OfferRow disagree"
        return map(OfferRow._make, cursor)

    def _offers_query(self, source: str, *, price_type_id: str | None, warehouse_ids: list[str] | None,
                      quantity_rule: str, include_bundles: bool, removed_before: str, with_attributes: bool = True,
                      with_pictures: bool = True, with_product_buy_price: bool = True, part: int = 0,
                      parts: int = 1, offer_ids: list[str] | None = None) -> tuple[str, dict]:
        """The offers query and its parameters.

        Stock is counted over ``warehouse_ids`` by the feed's ``quantity_rule``. A product with variants
        is left out (its variants are the offers), unless all of them were removed before
        ``removed_before``. A bundle comes with its components and their stock counted the same way
        (``components_json``). Rows come grouped by product. ``offer_ids`` narrows it to those offers
        (a push after a stock change).
        """
        params = {"source": source, "price_type": price_type_id, "removed_before": removed_before}
        stock_filter = ""
        if warehouse_ids is not None:
            names = [f"w{i}" for i in range(len(warehouse_ids))]
            params.update(zip(names, warehouse_ids))
            stock_filter = f" AND warehouse_id IN ({', '.join(':' + n for n in names)})"
        bundles = "" if include_bundles else " AND o.kind != 'bundle'"
        counted = STOCK_COUNTED[quantity_rule]
        components = COMPONENTS.format(counted=counted, stock_filter=stock_filter)
        if offer_ids is not None:
            params["offer_ids"] = json.dumps(list(offer_ids))
            bundles += " AND o.id IN (SELECT value FROM json_each(:offer_ids))"
        if parts > 1:  # one share of the catalog for one of several rendering processes
            bundles += " AND o.rowid % :parts = :part"
            params.update(parts=parts, part=part)
        sql = f"""
            SELECT o.id, o.product_id, o.kind, o.name, o.code, o.article, o.external_code, o.barcodes,
                   o.characteristics,
                   {"coalesce(nullif(o.buy_price, 0), po.buy_price)" if with_product_buy_price else "o.buy_price"} AS buy_price,
                   o.cost, o.archived, o.removed, o.removed_at, o.updated,
                   p.name AS product_name, p.category_id, p.unit_id, p.vat, p.vat_enabled, p.weight,
                   p.code AS product_code, p.external_code AS product_external_code,
                   p.article AS product_article, p.archived AS product_archived, p.removed AS product_removed,
                   p.removed_at AS product_removed_at, p.updated AS product_updated,
                   p.tracking_type,
                   CASE WHEN o.kind = 'bundle' THEN {components} END AS components_json,
                   (SELECT {counted} FROM stock
                     WHERE source = :source AND offer_id = o.id{stock_filter}) AS stock_counted,
                   coalesce((SELECT nullif(value, 0) FROM prices WHERE source = :source AND offer_id = o.id
                                AND price_type_id = :price_type),
                            (SELECT value FROM prices WHERE source = :source AND offer_id = o.product_id
                                AND price_type_id = :price_type)) AS price,
                   {ATTRIBUTES if with_attributes else "NULL"} AS attributes_json,
                   {"(" + PICTURES.format(owner="o.id") + ")" if with_pictures else "NULL"} AS pictures_json,
                   {"(" + PICTURES.format(owner="o.product_id") + ")" if with_pictures else "NULL"} AS product_pictures_json
            FROM offers o
            LEFT JOIN products p ON p.source = :source AND p.id = o.product_id
            {"LEFT JOIN offers po ON po.source = :source AND po.id = o.product_id" if with_product_buy_price else ""}
            WHERE o.source = :source{bundles}
              AND NOT (o.kind = 'product' AND EXISTS (
                    SELECT 1 FROM offers v WHERE v.source = :source AND v.product_id = o.id AND v.kind = 'variant'
                      AND (v.removed = 0 OR v.removed_at >= :removed_before)))
            ORDER BY o.product_id
        """
        return sql, params


class RenderReader(CatalogReader):
    """The reader of a rendering process, which opens the store for nothing else: through apsw.

    A feed reads every offer row, and Python 3.11's ``sqlite3`` releases and retakes the GIL around each
    column of each row (callgrind: 16k instructions a row of 35 columns), which apsw does not; apsw's own
    SQLite builds the query's JSON faster and writes its floats exactly (:meth:`packed_offers`). The render
    of an unchanged catalog reads, digests and looks up a quarter faster. SQLite's file format is the same
    whichever library opens it; a process where the store is open through sqlite3 cannot open this one.
    """

    library = "apsw"

    def _connect(self, uri: str):
        conn = apsw.Connection(uri, flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
        conn.set_busy_timeout(READER_WAIT_MS)
        return conn

    def _rows(self, sql: str, params: list) -> list[dict]:
        cursor = self.conn.cursor()  # apsw has no description once a query that found nothing is done
        cursor.row_trace = lambda cursor, row: dict(zip([d[0] for d in cursor.description], row))
        return cursor.execute(sql, params).fetchall()

    def packed_offers(self, source: str, **query) -> Iterator[tuple[str, str, str | None, int, bytes]]:
        """The offers of :meth:`offers`, each as (id, product id, category id, live, packed row): a render
        that reuses most offers' markup needs no more of them, and reads them faster so. Live: neither
        the offer nor its card is removed or archived. :func:`unpack_offer` makes the packed row an OfferRow.
        """
        sql, params = self._offers_query(source, **query)
        return self.conn.execute(PACKED_OFFERS.format(offers=sql), params)


class CatalogRun(Run):
    """Writes of one run; every method streams its records and touches only this source's rows."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._staged: dict[str, tuple[str, ...]] = {}  # rows waiting in temp.staged_<name>: their columns
        self._created: set[str] = set()  # the temp.staged_<name> tables of this run

    def skip(self, item_type: str, item_id: str | None, name: str | None, reason: str) -> None:
        """Record an item left out and why; its last good version stays (a full run must not take it for deleted)."""
        super().skip(item_type, item_id, name, reason)
        if item_id:
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

    def replace_children(self, table: str, owner_column: str, owner_ids: list[str], rows: Iterable[dict], pk: tuple[str, ...],
                         columns: tuple[str, ...] | None = None) -> int:
        """Replace the prices / attributes / images of the given owners with ``rows`` (tuples of ``columns``
        when given, see :meth:`upsert_rows`)."""
        self.delete_children(table, owner_column, owner_ids)
        return self.upsert_rows(table, columns, rows, pk) if columns else self.upsert(table, rows, pk)

    def delete_children(self, table: str, owner_column: str, owner_ids: list[str]) -> None:
        """Delete the prices / attributes / images of the given owners."""
        for chunk in chunks(owner_ids, 500):
            marks = ",".join("?" * len(chunk))
            self.db.execute(f"DELETE FROM {table} WHERE source = ? AND {owner_column} IN ({marks})", [self.source, *chunk])

    def stage(self, name: str, columns: tuple[str, ...], rows: list[tuple]) -> None:
        """Keep rows for :meth:`merge_staged` in a temporary table of this connection, appended to as
        they come (no index to keep in order, so appending costs little)."""
        if not rows:
            return
        if name not in self._created:
            self.db.execute(f"DROP TABLE IF EXISTS temp.staged_{name}")  # left by a run that failed
            self.db.execute(f"CREATE TEMP TABLE staged_{name} ({', '.join(columns)})")
            self._created.add(name)
        elif name not in self._staged:
            self.db.execute(f"DELETE FROM temp.staged_{name}")  # merged already
        if self._staged.setdefault(name, columns) != columns:
            raise ValueError(f"rows staged as {name} have columns {self._staged[name]}, not {columns}")
        most = min(STAGE_BATCH, 1 << (self.db.conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // len(columns)).bit_length() - 1)
        start = 0
        for count in _batch_sizes(len(rows), most):
            self.db.conn.execute(_staging_insert(name, len(columns), count),
                                 list(chain.from_iterable(rows[start:start + count])))
            start += count

    def merge_staged(self, name: str, table: str, pk: tuple[str, ...], *, seen: bool = False,
                     children_of: tuple[str, str] | None = None, whole: bool = False, keep: tuple[str, ...] = ()) -> int:
        """Write the rows staged as ``name`` into ``table`` in key order (they stay staged, as owners of
        children, until :meth:`drop_staged` or staging under that name again).

        One ``INSERT … SELECT … ORDER BY`` fills the table's B-tree page after page, where rows in the
        order MoySklad sends them (random ids) would each land on another page: the difference between
        a cache hit and a page read and written again, some 2× on a big full sync. ``children_of`` =
        (owner column, name of staged owners): first delete the rows of those owners (their prices,
        attributes), as :meth:`replace_children` does. ``seen``: see :meth:`_fixed`. ``whole``: the rows
        staged are the whole table (a full run), see :meth:`_indexes_after`. ``keep``: columns a new row gets
        and an existing one keeps.
        """
        columns = self._staged.pop(name, None)
        if children_of is not None and children_of[1] in self._created and self._holds(table):
            owner_column, owners = children_of
            self.db.execute(f"DELETE FROM {table} WHERE source = ? AND {owner_column} IN "
                            f"(SELECT id FROM temp.staged_{owners})", [self.source])
        if columns is None:
            return 0
        fixed = self._fixed(seen)
        select = (f"SELECT {', '.join([*fixed.values(), *columns])} FROM temp.staged_{name} "
                  f"WHERE true ORDER BY {', '.join(c for c in pk if c != 'source')}")  # WHERE: see SQLite's UPSERT parsing
        with self._indexes_after(table) if whole else contextlib.nullcontext():
            return self.db.execute(_upsert_sql(table, (*fixed, *columns), select, pk, keep)).rowcount

    @contextlib.contextmanager
    def _indexes_after(self, table: str):
        """Build the table's secondary indexes again after the block instead of keeping them row by row.

        Rows merged in key order fill the table's B-tree page after page, but an index in another order
        (offers by product) takes them at random places: with the cache a fraction of it, each lands on a
        page read and written again. Built after, an index is one sort and a sequential write. Inside
        the run's transaction, so a failed run keeps the index as it was.
        """
        indexes = self.db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
                                  "AND sql IS NOT NULL", [table]).fetchall()
        for name, _ in indexes:
            self.db.execute(f"DROP INDEX {name}")
        yield
        for _, sql in indexes:
            self.db.execute(sql)

    def update_from_staged(self, name: str, column: str) -> None:
        """Set one column of existing offers from the rows staged as ``name`` (``column``, ``id``), in key order."""
        if self._staged.pop(name, None) != (column, "id"):
            return
        self.db.execute(f"UPDATE offers SET {column} = staged.{column} FROM (SELECT {column}, id FROM temp.staged_{name} "
                        f"ORDER BY id) AS staged WHERE offers.source = ? AND offers.id = staged.id", [self.source])

    def drop_staged(self) -> None:
        """Forget what was staged (the temporary tables); a run does when its writes are merged."""
        for name in self._created:
            self.db.execute(f"DROP TABLE IF EXISTS temp.staged_{name}")
        self._created.clear()
        self._staged.clear()

    def _holds(self, table: str) -> bool:
        """Whether the table has rows of this source (a first sync has none to replace)."""
        return self.db.execute(f"SELECT 1 FROM {table} WHERE source = ? LIMIT 1", [self.source]).fetchone() is not None

    def _fixed(self, seen: bool) -> dict[str, str]:
        """Columns every row a merge writes gets, as SQL: the run's source, and for a reconciled table
        with ``seen`` this run as ``seen_run``, which also makes a removed row live again."""
        fixed = {"source": _literal(self.source)}
        if seen:
            fixed.update(seen_run=str(int(self.id)), removed="0", removed_at="NULL")
        return fixed

    def clear(self, table: str) -> None:
        self.db.execute(f"DELETE FROM {table} WHERE source = ?", [self.source])

    def offer_kinds(self, ids: Iterable[str], kinds: tuple[str, ...]) -> dict[str, str]:
        """Of ``ids``, the live offers of these kinds, with their kind."""
        found = {}
        for chunk in chunks(list(ids), 500):
            found.update(self.db.execute(
                f"SELECT id, kind FROM offers WHERE source = ? AND removed = 0 AND id IN ({','.join('?' * len(chunk))}) "
                f"AND kind IN ({','.join('?' * len(kinds))})", [self.source, *chunk, *kinds]).fetchall())
        return found

    def with_stock(self, ids: Iterable[str]) -> set[str]:
        """Of ``ids``, the offers with any stock, reserve or goods in transit on any warehouse."""
        found = set()
        for chunk in chunks(list(ids), 500):
            found.update(offer_id for (offer_id,) in self.db.execute(
                f"SELECT DISTINCT offer_id FROM stock WHERE source = ? AND offer_id IN ({','.join('?' * len(chunk))}) "
                "AND (stock != 0 OR reserve != 0 OR in_transit != 0)", [self.source, *chunk]))
        return found

    def count_offers(self, kinds: tuple[str, ...]) -> int:
        """Live, not archived offers of these kinds."""
        return self.db.execute(f"SELECT count(*) FROM offers WHERE source = ? AND removed = 0 AND archived = 0 "
                               f"AND kind IN ({','.join('?' * len(kinds))})", [self.source, *kinds]).fetchone()[0]

    def mark_unseen_removed(self, tables: tuple[str, ...] = RECONCILED_TABLES,
                            offer_kinds: tuple[str, ...] | None = None, seen_since: int | None = None) -> dict[str, int]:
        """After a full run: what the source no longer returns is marked removed, never deleted.

        ``tables`` and ``offer_kinds`` narrow it to what the run was complete for: a CommerceML
        offers file lists every variant but no categories or product cards. ``seen_since``: a run id;
        what a run from it on saw counts as returned (one full catalog sent as several files, each a run).
        """
        removed = {}
        now = utc_now()
        unseen = "seen_run != ?" if seen_since is None else "seen_run < ?"
        for table in tables:
            kinds = offer_kinds if table == "offers" and offer_kinds else ()
            cursor = self.db.execute(  # NOT INDEXED: the table in its own order, not row by row through an index
                f"UPDATE {table} NOT INDEXED SET removed = 1, removed_at = ? "
                f"WHERE source = ? AND removed = 0 AND (seen_run IS NULL OR {unseen})"
                + (f" AND kind IN ({', '.join('?' * len(kinds))})" if kinds else ""),
                [now, self.source, self.id if seen_since is None else seen_since, *kinds],
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

    def revive_offer_cards(self, cards: list[tuple[str, str | None, str | None, str | None]]) -> None:
        """Cards made up from offers (from_offer), named by an offers file again as (id, name or None, group or None,
        unit or None): live and not archived, with what is given; a Товар's card is left alone."""
        self.db.conn.executemany(
            "UPDATE products SET name = coalesce(?, name), category_id = coalesce(?, category_id), "
            "unit_id = coalesce(?, unit_id), archived = 0, removed = 0, removed_at = NULL "
            "WHERE source = ? AND id = ? AND from_offer = 1",
            [(name, category, unit, self.source, card_id) for card_id, name, category, unit in cards])

    def mark_seen(self, table: str, ids: list[str]) -> None:
        """Rows this run refers to without rewriting them count as seen (reconciliation, deactivation)."""
        for chunk in chunks(ids, 500):
            marks = ",".join("?" * len(chunk))
            self.db.execute(f"UPDATE {table} SET seen_run = ? WHERE source = ? AND id IN ({marks})",
                            [self.id, self.source, *chunk])

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

    def upsert_rows(self, table: str, columns: tuple[str, ...], rows: list[tuple], pk: tuple[str, ...], *,
                    seen: bool = False) -> int:
        """:meth:`upsert` for rows that are tuples of ``columns``: the source (and with ``seen`` this run's
        mark, see :meth:`_fixed`) are part of the statement, so the rows go to SQLite as they are."""
        fixed = self._fixed(seen)
        values = f"VALUES ({', '.join([*fixed.values(), *'?' * len(columns)])})"
        sql = _upsert_sql(table, (*fixed, *columns), values, pk)
        for chunk in chunks(rows, UPSERT_CHUNK):
            self.db.conn.executemany(sql, chunk)
        return len(rows)


UPSERT_CHUNK = 2000
# Rows a staging INSERT carries at most (a power of two, within SQLite's limit of bound values): one
# statement for many rows costs a fifth less than executemany, which steps SQLite (and lets go of the
# GIL) once a row.
STAGE_BATCH = 256


@functools.lru_cache(maxsize=256)
def _staging_insert(name: str, columns: int, count: int) -> str:
    """INSERT of ``count`` rows into temp.staged_<name>: the same string object every time, so sqlite3 finds
    its prepared statement by a hash kept in the string instead of hashing and comparing some 10 KB a batch."""
    row = f"({', '.join('?' * columns)})"
    return f"INSERT INTO temp.staged_{name} VALUES {', '.join([row] * count)}"


def _batch_sizes(count: int, most: int):
    """``count`` rows as batches of ``most``, the rest in powers of two: few distinct statements to cache."""
    yield from [most] * (count // most)
    size = most
    while size:
        size >>= 1
        if count % most & size:
            yield size


def _literal(text: str) -> str:
    """A text as an SQL literal (a run's own source name, written into its bulk statements)."""
    return "'" + text.replace("'", "''") + "'"


def _upsert_sql(table: str, names: tuple[str, ...], rows: str, pk: tuple[str, ...], keep: tuple[str, ...] = ()) -> str:
    """INSERT of ``rows`` (a ``VALUES`` or a ``SELECT``) into the columns ``names``, updating on conflict all but
    ``pk`` and ``keep``."""
    updates = ", ".join(f"{c} = excluded.{c}" for c in names if c not in pk and c not in keep)
    return (f"INSERT INTO {table} ({', '.join(names)}) {rows} "
            f"ON CONFLICT ({', '.join(pk)}) DO " + (f"UPDATE SET {updates}" if updates else "NOTHING"))


def _upsert_statement(table: str, columns: tuple[str, ...], pk: tuple[str, ...]):
    """INSERT … ON CONFLICT for these columns, and a getter of a row's values (``source`` bound first)."""
    others = [c for c in columns if c != "source"]
    sql = _upsert_sql(table, ("source", *others), f"VALUES ({', '.join('?' * (len(others) + 1))})", pk)
    if not others:
        return sql, lambda row: ()
    if len(others) == 1:
        getter = operator.itemgetter(others[0])
        return sql, lambda row: (getter(row),)
    return sql, operator.itemgetter(*others)


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
