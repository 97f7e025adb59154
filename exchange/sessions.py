"""Exchange sessions: the token that carries one, its shared state, and the login throttle.

gunicorn runs several workers and 1C's next request may reach any of them, so nothing lives in
process memory. A session's row (the hash of its token, client, start, outcome) is in the exchange
log (:class:`store.ExchangeLog`); what changes on every request (last activity, bytes, uploaded files,
archives, imports in progress) is in ``<data_dir>/exchange/<id>/state.json``, rewritten atomically
under a file lock. Uploads go to ``<data_dir>/exchange/<id>/upload/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from core.clock import utc_now
from core.files import atomic_write, locked

if TYPE_CHECKING:
    from store import ExchangeLog

COOKIE_NAME = "skladbridge_exchange"
# Failed logins from one address: after MAX_FAILURES within FAILURE_WINDOW seconds the address
# is refused until the oldest of them leaves the window.
MAX_FAILURES = 5
FAILURE_WINDOW = 600
MAX_TRACKED_ADDRESSES = 10_000
# An import whose heartbeat stopped this long ago died with its worker (it beats every 2 s).
DEAD_IMPORT_SECONDS = 60.0


class Refused(Exception):
    """A request 1C must be told no; the message (Russian) becomes its ``failure`` text."""


def hash_token(token: str) -> str:
    """Tokens are stored hashed: a copy of the store does not let anyone into a live session."""
    return hashlib.sha256(token.encode()).hexdigest()


class ExchangeSession:
    """One logged-in 1C exchange: its row in the store and its folder on disk."""

    def __init__(self, root: Path, row: dict, token: str = ""):
        self.id: int = row["id"]
        self.row = row
        self.token = token
        self.dir = root / str(self.id)
        self.upload_dir = self.dir / "upload"
        self.touched = False  # whether this request has written the state (and with it, last activity)
        self.closed = False

    def read_state(self) -> dict:
        """A consistent snapshot without the lock (the file is only ever replaced whole)."""
        try:
            return json.loads((self.dir / "state.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            return new_state()

    @contextlib.contextmanager
    def state(self):
        """Read-modify-write of the state, exclusive across threads and worker processes; every write
        also records the session as active now."""
        with locked(self.dir / "state.lock"):
            state = self.read_state()
            yield state
            state["last_seen"] = time.time()
            atomic_write(self.dir / "state.json", json.dumps(state, ensure_ascii=False))
        self.touched = True

    def touch(self) -> None:
        """Record the session as active, unless this request already wrote its state or closed it."""
        if not self.touched and not self.closed:
            with self.state():
                pass

    def close(self) -> None:
        """The session is over: its folder (state and uploads) goes."""
        shutil.rmtree(self.dir, ignore_errors=True)
        self.closed = True

    @contextlib.contextmanager
    def upload_lock(self):
        """One upload at a time per session: appends to a file must not interleave."""
        with locked(self.dir / "upload.lock"):
            yield

    def expired(self, state: dict, minutes: int) -> bool:
        return time.time() - state["last_seen"] > minutes * 60


def new_state() -> dict:
    # bytes: received; unpacked: bytes archives unpacked to; created: files made by uploads and archives
    return {"last_seen": time.time(), "bytes": 0, "unpacked": 0, "created": 0, "files": {}, "zips": {}, "imports": {},
            "failure": None}


def open_session(log: ExchangeLog, root: Path, client: str | None) -> ExchangeSession:
    """Start a session after a good login; its token is told to 1C once and only its hash is kept."""
    token = secrets.token_urlsafe(32)
    session = ExchangeSession(root, log.open_session(hash_token(token), client), token)
    session.upload_dir.mkdir(parents=True, exist_ok=True)
    with session.state() as state:
        state.update(new_state())
    return session


def find_session(log: ExchangeLog, root: Path, tokens: list[str], minutes: int) -> ExchangeSession:
    """The live session one of the tokens (cookie, then sessid) names (the request touches it as active)."""
    if not tokens:
        raise Refused("нет сеанса обмена: сначала выполните авторизацию (mode=checkauth)")
    for token in tokens:
        row = log.session_by_token(hash_token(token))
        if row is None:
            continue
        session = ExchangeSession(root, row, token)
        if row["finished_at"] or not session.dir.is_dir():
            raise Refused("сеанс обмена уже завершён: выполните авторизацию заново")
        if session.expired(session.read_state(), minutes):
            raise Refused(f"сеанс обмена истёк (нет запросов больше {minutes} мин): выполните авторизацию заново")
        return session
    raise Refused("сеанс обмена не найден: выполните авторизацию заново (mode=checkauth)")


def prune_sessions(log: ExchangeLog, root: Path, minutes: int) -> int:
    """Remove the folders of sessions that expired (1C never sent complete, or its worker was killed)
    and log them as such, with the bytes that did arrive; returns how many went."""
    pruned = 0
    for folder in root.iterdir() if root.is_dir() else ():
        if not folder.name.isdigit():
            continue
        session = ExchangeSession(root, {"id": int(folder.name)})
        state = session.read_state()
        running = any(job["status"] == "running" and time.time() - job.get("beat", 0) < DEAD_IMPORT_SECONDS
                      for job in state["imports"].values())
        if running or not session.expired(state, minutes):
            continue
        _count_interrupted_upload(session, state)
        row = log.session(session.id)
        if row and not row["finished_at"]:  # a session that failed stays failed: what the operator must see
            log.update_session(session.id, finished_at=utc_now(), result="failed" if row["result"] == "failed" else "expired",
                               files=files_summary(state), bytes=state["bytes"])
        shutil.rmtree(folder, ignore_errors=True)
        pruned += 1
    return pruned


def _count_interrupted_upload(session: ExchangeSession, state: dict) -> None:
    """A chunk whose worker died mid-request: count what reached the disk and mark the file interrupted."""
    receiving = state.pop("receiving", None)
    if not receiving:
        return
    name = receiving["name"]
    try:  # a chunk written beside the upload (exchange.uploads.append_stream) holds what came before it too
        arrived = max(0, (session.upload_dir / (receiving.get("temp") or name)).stat().st_size - receiving["from"])
    except OSError:
        arrived = 0
    state["bytes"] += arrived
    key = name if "/" not in name else name.split("/")[0] + "/"
    entry = state["files"].setdefault(key, {"bytes": 0} if "/" not in name else {"files": 0, "bytes": 0})
    entry["bytes"] += arrived
    entry["interrupted"] = True


def files_summary(state: dict) -> list[dict]:
    """What a session received and what became of it, for the session log."""
    summary = []
    for name, entry in state["files"].items():
        item = {"name": name, **entry}
        if name in state["zips"]:
            item["archive"] = state["zips"][name]
        job = state["imports"].get(name)
        if job:
            item["import"] = {k: v for k, v in job.items() if k not in ("beat", "progress")}
        summary.append(item)
    for name, job in state["imports"].items():  # files that came inside an archive
        if name not in state["files"]:
            summary.append({"name": name, "import": {k: v for k, v in job.items() if k not in ("beat", "progress")}})
    return summary


class LoginThrottle:
    """Counts failed logins per address in a file, so every worker sees the same count."""

    def __init__(self, path: Path):
        self.path = path

    def attempt(self, address: str, credentials_match: Callable[[], bool]) -> None:
        """One login from address: raises Refused while it must wait, or (counted) when the credentials are wrong.

        The check, the compare and the record are one step under the lock: parallel attempts (gunicorn's
        processes and threads) cannot all pass the check before any of their failures is written.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with locked(self.path.with_suffix(".lock")):
            table = self._recent(self._read())
            failures = table.get(address, [])
            if len(failures) >= MAX_FAILURES:
                wait = max(1, int(failures[-MAX_FAILURES] + FAILURE_WINDOW - time.time()))
                raise Refused(f"слишком много неудачных попыток входа: повторите через {math.ceil(wait / 60)} мин")
            matched = credentials_match()
            if matched and address not in table:
                return
            if matched:
                del table[address]
            else:
                failures.append(time.time())
                table[address] = failures
            newest = sorted(table, key=lambda a: table[a][-1], reverse=True)[:MAX_TRACKED_ADDRESSES]
            atomic_write(self.path, json.dumps({address: table[address] for address in newest}))
        if not matched:
            raise Refused("неверный логин или пароль обмена")

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return {}

    @staticmethod
    def _recent(table: dict) -> dict:
        since = time.time() - FAILURE_WINDOW
        recent = {address: [t for t in times if t > since] for address, times in table.items()}
        return {address: times for address, times in recent.items() if times}
