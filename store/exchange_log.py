"""The CommerceML exchange session log: one row per 1C session, in a file of its own.

Kept apart from the catalog so that a 1C login never waits for a catalog import or a sync to
commit. Only the hash of a session's token is stored.
"""

from __future__ import annotations

import json

from core.clock import utc_now
from store.database import Database

EXCHANGE_LOG_SCHEMA = """
CREATE TABLE IF NOT EXISTS exchange_sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, token_hash TEXT NOT NULL UNIQUE, client TEXT,
    started_at TEXT NOT NULL, finished_at TEXT, files TEXT, bytes INTEGER NOT NULL DEFAULT 0,
    result TEXT NOT NULL, error TEXT);
CREATE TABLE IF NOT EXISTS exchange_totals (
    id INTEGER PRIMARY KEY CHECK (id = 1), sessions INTEGER NOT NULL, failed INTEGER NOT NULL, bytes INTEGER NOT NULL);
"""
# Sessions kept in the log (the page shows the latest few). 1C exchanging every few minutes leaves some 100,000 a
# year, and /metrics summed them all at every scrape; older ones are folded into exchange_totals and deleted.
SESSIONS_KEPT = 1000


class ExchangeLog(Database):
    """The sessions of the exchange endpoint, newest last."""

    SCHEMA = EXCHANGE_LOG_SCHEMA

    def open_session(self, token_hash: str, client: str | None) -> dict:
        """Log a new session; the token itself is never stored, only its hash."""
        with self.db.atomic():
            session_id = self.db["exchange_sessions"].insert(
                {"token_hash": token_hash, "client": client, "started_at": utc_now(), "result": "open"}
            ).last_pk
            self._fold_old_sessions()
        return self.session(session_id)

    def _fold_old_sessions(self) -> None:
        """Count the sessions older than the latest SESSIONS_KEPT into exchange_totals and delete them."""
        older = "FROM exchange_sessions WHERE id < (SELECT id FROM exchange_sessions ORDER BY id DESC LIMIT 1 OFFSET ?)"
        sessions, failed, data = self.db.execute(
            f"SELECT count(*), coalesce(sum(result = 'failed'), 0), coalesce(sum(bytes), 0) {older}",
            [SESSIONS_KEPT - 1]).fetchone()
        if not sessions:
            return
        self.db.execute("INSERT INTO exchange_totals VALUES (1, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                        "sessions = sessions + excluded.sessions, failed = failed + excluded.failed, "
                        "bytes = bytes + excluded.bytes", [sessions, failed, data])
        self.db.execute(f"DELETE {older}", [SESSIONS_KEPT - 1])

    def session(self, session_id: int) -> dict | None:
        rows = list(self.db.query("SELECT * FROM exchange_sessions WHERE id = ?", [session_id]))
        return _decode_session(rows[0]) if rows else None

    def session_by_token(self, token_hash: str) -> dict | None:
        rows = list(self.db.query("SELECT * FROM exchange_sessions WHERE token_hash = ?", [token_hash]))
        return _decode_session(rows[0]) if rows else None

    def update_session(self, session_id: int, **values) -> None:
        """Record progress or the outcome of a session (files as a list, saved as JSON)."""
        if "files" in values:
            values["files"] = json.dumps(values["files"], ensure_ascii=False)
        with self.db.atomic():
            self.db["exchange_sessions"].update(session_id, values)

    def totals(self) -> dict:
        """Sessions, failed sessions and bytes received since the log began (for metrics): the sessions kept plus
        those folded away."""
        row = self.db.execute(
            "SELECT count(*) + coalesce((SELECT sessions FROM exchange_totals), 0), "
            "coalesce(sum(result = 'failed'), 0) + coalesce((SELECT failed FROM exchange_totals), 0), "
            "coalesce(sum(bytes), 0) + coalesce((SELECT bytes FROM exchange_totals), 0) FROM exchange_sessions").fetchone()
        return dict(zip(("sessions", "failed", "bytes"), row))

    def recent(self, limit: int = 20) -> list[dict]:
        """The latest sessions for the health page, newest first, without their token hashes."""
        rows = self.db.query("SELECT * FROM exchange_sessions ORDER BY id DESC LIMIT ?", [limit])
        return [{k: v for k, v in _decode_session(r).items() if k != "token_hash"} for r in rows]


def _decode_session(row: dict) -> dict:
    row = dict(row)
    row["files"] = json.loads(row["files"]) if row.get("files") else []
    return row
