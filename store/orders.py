"""Orders from the shop and what 1C says of them: the rows behind the orders API and ``type=sale``.

Orders live in the catalog store's file, in tables of their own. Each change is recorded in
``order_history``; a status document from 1C is applied as one run (all of it or nothing).
"""

from __future__ import annotations

import json

from core.clock import moscow_now, utc_now

ORDERS_SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    number TEXT NOT NULL PRIMARY KEY, ordered_at TEXT NOT NULL, currency TEXT NOT NULL,
    currency_rate TEXT NOT NULL DEFAULT '1', total INTEGER NOT NULL,
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
    vat TEXT, amount INTEGER NOT NULL, unit_code TEXT, unit_name TEXT,
    PRIMARY KEY (order_number, position)) WITHOUT ROWID;
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
# Columns that came after the tables (see Database.ADDED_COLUMNS): an order stored before rates were kept went
# to 1C at rate 1, a line stored before units were kept had no unit of its own.
ORDERS_ADDED_COLUMNS = (("orders", "currency_rate", "TEXT NOT NULL DEFAULT '1'"), ("order_items", "unit_code", "TEXT"),
                        ("order_items", "unit_name", "TEXT"))
# Order columns the shop owns (the API writes them) and those 1C / MoySklad owns (status documents).
ORDER_COLUMNS = ("ordered_at", "currency", "currency_rate", "total", "customer_name", "customer_phone", "customer_email",
                 "customer_address", "company_name", "company_inn", "company_kpp", "payment_method", "paid",
                 "shipping_method", "comment")
# unit_code / unit_name: the unit the shop gave for the line, absent from a line without one
ORDER_ITEM_COLUMNS = ("kind", "offer_id", "name", "quantity", "price", "discount", "vat", "amount", "unit_code", "unit_name")
ORDER_STATUS_COLUMNS = ("status", "paid_at", "shipped_at", "posted", "deleted", "cancelled")
# Of those, the ones the shop may set too (to tell 1C of a cancellation); the latest word, either side's, stands.
ORDER_SHOP_STATUS_COLUMNS = ("status", "cancelled")
ORDER_FLAGS = ("paid", "posted", "deleted", "cancelled")
UNCONFIRMED_QUERIES_SHOWN = 10  # how far back the health page counts queries 1C did not confirm
ORDERS_SOURCE = "orders"
# The delivery line of an order: the id 1C maps to its delivery service (1C's own example orders.xml).
DELIVERY_ID = "ORDER_DELIVERY"
DELIVERY_NAME = "Доставка заказа"


class OrderBook:
    """Orders (mixed into the catalog store, whose runs record status documents)."""

    def save_order(self, number: str, order: dict, items: list[dict], content_hash: str,
                   statuses: dict | None = None, earlier_hash: str | None = None) -> str:
        """Create or update an order from the shop in one transaction: 'created', 'updated' or 'unchanged'.

        The same content again changes nothing (a retried request is harmless). Changed content is a
        new revision, which the next ``type=sale&mode=query`` sends again; the statuses 1C reported
        stay as they are, but for those in ``statuses`` (columns of ORDER_SHOP_STATUS_COLUMNS), which
        the shop sets. ``items`` includes the delivery line (kind ``delivery``). ``earlier_hash``: the hash the
        same content had in an earlier release, which an order it stored still carries: unchanged too.
        """
        statuses = statuses or {}
        if set(statuses) - set(ORDER_SHOP_STATUS_COLUMNS):  # a programming error: columns are named in the SQL below
            raise ValueError(f"not a status the shop sets: {sorted(set(statuses) - set(ORDER_SHOP_STATUS_COLUMNS))}")
        with self.immediate():
            row = self._order_row(number)
            now = utc_now()
            # no date given: the time the order first arrived (Moscow wall clock, as 1C reads it), kept on later updates
            order = {**order, "ordered_at": order["ordered_at"] or (row["ordered_at"] if row else
                                                                     moscow_now().isoformat(timespec="seconds"))}
            columns = (*ORDER_COLUMNS, *statuses)
            order.update(statuses)
            if row is None:
                self.db.execute(
                    f"INSERT INTO orders (number, {', '.join(columns)}, revision, content_hash, created_at, updated_at) "
                    f"VALUES (?, {', '.join('?' * len(columns))}, 1, ?, ?, ?)",
                    [number, *(order[c] for c in columns), content_hash, now, now])
                self._replace_order_items(number, items)
                self._order_history(number, now, "api", "created", None, "1", "revision 1")
                return "created"
            if row["content_hash"] in (content_hash, earlier_hash):
                return "unchanged"
            old_items = self._order_items(number)
            changed = [c for c in columns if row[c] != order[c]]
            if [{c: item[c] for c in ORDER_ITEM_COLUMNS} for item in old_items] != \
                    [{c: item.get(c) for c in ORDER_ITEM_COLUMNS} for item in items]:
                changed.append("items")
            revision = row["revision"] + 1
            self.db.execute(
                f"UPDATE orders SET {', '.join(c + ' = ?' for c in columns)}, revision = ?, content_hash = ?, "
                "updated_at = ? WHERE number = ?", [*(order[c] for c in columns), revision, content_hash, now, number])
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
        with self.immediate():
            rows = list(self.db.query(
                "SELECT * FROM orders WHERE exported_revision IS NULL OR exported_revision < revision "
                "ORDER BY ordered_at, number LIMIT ?", [limit]))
            query_id = self.db.execute(
                "INSERT INTO order_queries (session_id, format, sent_at, orders) VALUES (?, ?, ?, ?)",
                [session_id, fmt, utc_now(), len(rows)]).lastrowid
            self.db.conn.executemany("INSERT INTO order_query_items (query_id, order_number, revision) VALUES (?, ?, ?)",
                                     [(query_id, row["number"], row["revision"]) for row in rows])
            items = self._items_of([row["number"] for row in rows])  # the lines of the very revision recorded
        units = self.catalog_units([item["offer_id"] for lines in items.values() for item in lines])
        for row in rows:
            row["items"] = items.get(row["number"], [])
            row["catalog_units"] = {item["offer_id"]: units[item["offer_id"]] for item in row["items"]
                                    if item["offer_id"] in units}
        return query_id, rows

    def catalog_units(self, offer_ids: list[str]) -> dict[str, dict]:
        """The unit (code, name, description) the catalog gives each of these goods, by the id an order line uses:
        an offer's (its product's unit) or a product's, ``product#characteristic`` falling back to the product.
        A good known to several sources takes a live card's unit before a removed one's."""
        rows = self.db.query(
            "SELECT w.value AS offer_id, u.code, u.name, u.description FROM json_each(?) w "
            "JOIN (SELECT DISTINCT source FROM units) s "
            "JOIN products p ON p.source = s.source AND p.id = coalesce("
            "    (SELECT o.product_id FROM offers o WHERE o.source = s.source AND o.id = w.value),"
            "    substr(w.value, 1, instr(w.value || '#', '#') - 1)) "
            "JOIN units u ON u.source = p.source AND u.id = p.unit_id "
            "ORDER BY p.removed DESC, s.source DESC", [json.dumps(sorted(set(offer_ids)))])
        return {row.pop("offer_id"): row for row in rows}  # the last row of an id wins: live, then first source

    def base_currency(self) -> str:
        """The currency order amounts count in at rate 1: the catalog source's accounting currency (MoySklad's
        company settings) when it names one by ISO code, else the rouble."""
        for (value,) in self.db.execute("SELECT value FROM source_settings WHERE key = 'currency' ORDER BY source"):
            if value and len(value) == 3 and value.isascii() and value.isalpha() and value.isupper():
                return value
        return "RUB"

    def confirm_order_query(self, session_id: int) -> int | None:
        """mode=success: the orders of the session's latest query, at the revision sent, become exported.

        Returns how many orders that query sent, or None when the session made no query. Orders
        created or changed after the query are not touched: they go in the next one.
        """
        with self.immediate():
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
        values only for the columns it states, and optionally ``"defaults"``: values for columns the order
        has nothing in yet (a paid flag without a date). Unknown orders are skipped with the reason recorded.
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
                defaults = update.get("defaults", {})
                unknown = (set(update["values"]) | set(defaults)) - set(ORDER_STATUS_COLUMNS)
                if unknown:  # a programming error: columns are named in the SQL below
                    raise ValueError(f"not an order status column: {sorted(unknown)}")
                values = {**{c: v for c, v in defaults.items() if row[c] is None}, **update["values"]}
                changed = {c: v for c, v in values.items() if row[c] != v}
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
        recent = self.db.execute("SELECT confirmed_at FROM order_queries WHERE orders > 0 ORDER BY id DESC LIMIT ?",
                                 [UNCONFIRMED_QUERIES_SHOWN]).fetchall()
        unconfirmed = next((n for n, (confirmed_at,) in enumerate(recent) if confirmed_at), len(recent))
        return {"orders": total, "waiting_for_1c": waiting, "oldest_waiting_since": oldest,
                "last_query": dict(zip(("sent_at", "confirmed_at", "orders"), last)) if last else None,
                "unconfirmed_queries": unconfirmed}  # the latest queries with orders in a row that 1C never confirmed

    def _order_row(self, number: str) -> dict | None:
        rows = list(self.db.query("SELECT * FROM orders WHERE number = ?", [number]))
        return rows[0] if rows else None

    def _order_items(self, number: str) -> list[dict]:
        return self._items_of([number]).get(number, [])

    def _items_of(self, numbers: list[str]) -> dict[str, list[dict]]:
        """The lines of several orders in one query, by order number, in position order."""
        items: dict[str, list[dict]] = {}
        if not numbers:
            return items
        rows = self.db.query(
            f"SELECT order_number, position, {', '.join(ORDER_ITEM_COLUMNS)} FROM order_items "
            f"WHERE order_number IN (SELECT value FROM json_each(?)) ORDER BY order_number, position",
            [json.dumps(numbers)])
        for row in rows:
            items.setdefault(row.pop("order_number"), []).append(row)
        return items

    def _replace_order_items(self, number: str, items: list[dict]) -> None:
        self.db.execute("DELETE FROM order_items WHERE order_number = ?", [number])
        self.db.conn.executemany(
            f"INSERT INTO order_items (order_number, position, {', '.join(ORDER_ITEM_COLUMNS)}) "
            f"VALUES (?, ?, {', '.join('?' * len(ORDER_ITEM_COLUMNS))})",
            [(number, position, *(item.get(c) for c in ORDER_ITEM_COLUMNS)) for position, item in enumerate(items, 1)])

    def _order_history(self, number: str, at: str, source: str, field_name: str, old: str | None, new: str | None,
                       detail: str | None) -> None:
        self.db.execute("INSERT INTO order_history (order_number, at, source, field, old, new, detail) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)", [number, at, source, field_name, old, new, detail])


def _history_value(column: str, value) -> str | None:
    """A status value as the history shows it: flags as true/false, the rest as text."""
    if value is None:
        return None
    return ("true" if value else "false") if column in ORDER_FLAGS else str(value)
