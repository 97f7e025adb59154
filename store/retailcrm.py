"""What skladbridge last pushed to retailCRM, per feed, offer and target, and which offers it is waiting for.

A target is one value retailCRM keeps per offer: ``store:<code>`` (available and purchase price on
one retailCRM warehouse) or ``price:<code>`` (one price type). A push stages the values the feed
says now in a temporary table, compares them in SQL with the last pushed ones, sends only the
difference and records each batch as pushed once retailCRM accepted it. Offers retailCRM answered
as not found are kept as waiting: their values stay unrecorded, so every later push sends them
again until retailCRM knows them (after it loads the ICML file). A push of some offers only (after a
stock webhook) records them as owed before it sends and settles them once it has: the offers of one
that failed go with the next such push, whichever goods that one is about.
"""

from __future__ import annotations

from collections.abc import Iterable

from core.clock import utc_now

RETAILCRM_SCHEMA = """
CREATE TABLE IF NOT EXISTS retailcrm_pushed (
    feed TEXT NOT NULL, offer_id TEXT NOT NULL, target TEXT NOT NULL, value TEXT, pushed_at TEXT NOT NULL,
    PRIMARY KEY (feed, offer_id, target)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS retailcrm_owed (
    feed TEXT NOT NULL, offer_id TEXT NOT NULL, PRIMARY KEY (feed, offer_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS retailcrm_waiting (
    feed TEXT NOT NULL, offer_id TEXT NOT NULL, since TEXT NOT NULL, last_attempt_at TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1, PRIMARY KEY (feed, offer_id)) WITHOUT ROWID;
"""
# Per connection, never in the file: what one push computed, before it is compared with what was pushed.
STAGE_SCHEMA = """CREATE TEMP TABLE IF NOT EXISTS retailcrm_stage (
    offer_id TEXT NOT NULL, target TEXT NOT NULL, value TEXT, PRIMARY KEY (offer_id, target)) WITHOUT ROWID"""
SEND_SCHEMA = STAGE_SCHEMA.replace("retailcrm_stage", "retailcrm_send")
STAGE_CHUNK = 5000


class PushedValues:
    """The last pushed values and the waiting offers (mixed into :class:`store.CatalogStore`)."""

    def stage_push(self, values: Iterable[tuple[str, str, str | None]]) -> int:
        """Replace the stage with (offer id, target, value) rows; a None value means "no value"."""
        count = 0
        with self.deferred():
            self.db.execute(STAGE_SCHEMA)
            self.db.execute("DELETE FROM temp.retailcrm_stage")
            chunk: list = []
            for row in values:
                chunk.append(row)
                if len(chunk) >= STAGE_CHUNK:
                    count += self._stage(chunk)
                    chunk = []
            count += self._stage(chunk)
        return count

    def _stage(self, rows: list) -> int:
        self.db.conn.executemany("INSERT OR REPLACE INTO temp.retailcrm_stage VALUES (?, ?, ?)", rows)
        return len(rows)

    def plan_changes(self, feed: str, everything: bool = False) -> int:
        """From the stage, what to send: rows that differ from the last pushed (every row with a value
        when ``everything``); a None value whose target had one before means "remove it". Returns the rows."""
        with self.deferred():
            self.db.execute(SEND_SCHEMA)
            self.db.execute("DELETE FROM temp.retailcrm_send")
            return self.db.execute(
                "INSERT INTO temp.retailcrm_send SELECT s.offer_id, s.target, s.value FROM temp.retailcrm_stage s "
                "LEFT JOIN retailcrm_pushed p ON p.feed = ? AND p.offer_id = s.offer_id AND p.target = s.target "
                "WHERE s.value IS NOT p.value OR (? AND s.value IS NOT NULL)", [feed, int(everything)]).rowcount

    def planned_batch(self, kind: str, after: str, offers: int) -> list[tuple[str, str, str | None]]:
        """The planned rows of one kind (``store`` or ``price``) for the next ``offers`` offers after ``after``."""
        prefix = kind + ":"
        return self.db.execute(
            "SELECT offer_id, target, value FROM temp.retailcrm_send WHERE offer_id IN ("
            "SELECT DISTINCT offer_id FROM temp.retailcrm_send WHERE offer_id > ? AND substr(target, 1, ?) = ? "
            "ORDER BY offer_id LIMIT ?) AND substr(target, 1, ?) = ? ORDER BY offer_id, target",
            [after, len(prefix), prefix, offers, len(prefix), prefix]).fetchall()

    def planned_offers(self, kind: str) -> int:
        prefix = kind + ":"
        return self.db.execute("SELECT count(DISTINCT offer_id) FROM temp.retailcrm_send WHERE substr(target, 1, ?) = ?",
                               [len(prefix), prefix]).fetchone()[0]

    def record_pushed(self, feed: str, values: list[tuple[str, str, str | None]]) -> None:
        """retailCRM accepted these (offer id, target, value): they are what it holds now."""
        now = utc_now()
        with self.immediate():
            self.db.conn.executemany(
                "INSERT INTO retailcrm_pushed (feed, offer_id, target, value, pushed_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (feed, offer_id, target) DO UPDATE SET value = excluded.value, pushed_at = excluded.pushed_at",
                [(feed, offer_id, target, value, now) for offer_id, target, value in values])
            self.db.conn.executemany("DELETE FROM retailcrm_waiting WHERE feed = ? AND offer_id = ?",
                                     [(feed, offer_id) for offer_id in {v[0] for v in values}])

    def owe(self, feed: str, offer_ids: Iterable[str]) -> list[str]:
        """A push of these offers begins: they are owed until :meth:`settle`. Returns them with the offers
        still owed by pushes that failed."""
        with self.immediate():
            self.db.conn.executemany("INSERT OR IGNORE INTO retailcrm_owed (feed, offer_id) VALUES (?, ?)",
                                     [(feed, offer_id) for offer_id in offer_ids])
            return [offer_id for (offer_id,) in self.db.execute(
                "SELECT offer_id FROM retailcrm_owed WHERE feed = ? ORDER BY offer_id", [feed])]

    def settle(self, feed: str, offer_ids: list[str] | None) -> None:
        """A push has sent all it planned: what it staged (``offer_ids``; None: the whole feed) is owed no more."""
        with self.immediate():
            if offer_ids is None:
                self.db.execute("DELETE FROM retailcrm_owed WHERE feed = ?", [feed])
            else:
                self.db.conn.executemany("DELETE FROM retailcrm_owed WHERE feed = ? AND offer_id = ?",
                                         [(feed, offer_id) for offer_id in offer_ids])

    def record_waiting(self, feed: str, offer_ids: Iterable[str]) -> None:
        """retailCRM does not know these offers yet: they wait, and later pushes send them again."""
        now = utc_now()
        with self.immediate():
            self.db.conn.executemany(
                "INSERT INTO retailcrm_waiting (feed, offer_id, since, last_attempt_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (feed, offer_id) DO UPDATE SET last_attempt_at = excluded.last_attempt_at, "
                "attempts = attempts + 1", [(feed, offer_id, now, now) for offer_id in offer_ids])

    def forget_unstaged_waiting(self, feed: str) -> int:
        """After a push that staged the whole feed: offers the feed no longer publishes wait for nothing."""
        with self.immediate():
            return self.db.execute(
                "DELETE FROM retailcrm_waiting WHERE feed = ? AND offer_id NOT IN "
                "(SELECT offer_id FROM temp.retailcrm_stage)", [feed]).rowcount

    def waiting_offers(self, feed: str) -> int:
        return self.db.execute("SELECT count(*) FROM retailcrm_waiting WHERE feed = ?", [feed]).fetchone()[0]

    def pushed_values(self, feed: str, offer_id: str) -> dict[str, str | None]:
        """{target: value} as last pushed for one offer."""
        return dict(self.db.execute("SELECT target, value FROM retailcrm_pushed WHERE feed = ? AND offer_id = ?",
                                    [feed, offer_id]).fetchall())

    def push_totals(self, source: str) -> dict:
        """Over every push of a feed: runs, failures, requests, throttled answers, records sent, offers not
        found, and the webhook-to-retailCRM latencies (count and sum) for metrics."""
        totals, counts = self.run_totals(source, "push"), self.counted_totals(source, "push")
        summed = {key: counts.get(key, (0, 0))[0] for key in ("offers", "records", "not_found")}
        latency_sum, latency_count = counts.get("latency_seconds", (0, 0))
        return {**totals, **summed, "latency_count": latency_count, "latency_sum": latency_sum}
