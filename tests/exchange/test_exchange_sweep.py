"""A 1C session whose worker was killed in the middle of a chunk: what arrived is logged, and the session's
folder (partial upload, temp files) is swept once it expires, without waiting for 1C to log in again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from emulator.harness import ROOT, wait_for
from exchange.sessions import open_session
from scheduler import start_scheduler, sweep_exchange_sessions
from store import ExchangeLog
from tests.exchange.test_exchange import exchange_settings

UPLOADER = r"""
import sys, time
from pathlib import Path
from core.settings import ExchangeSettings
from exchange.sessions import ExchangeSession
from exchange.uploads import receive
from store import ExchangeLog

root, session_id, log_path = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
with ExchangeLog(log_path) as log:
    session = ExchangeSession(root, log.session(session_id))


class SlowClient:
    '''1C on a slow line: 64 KB every 20 ms, for ever.'''

    def read(self, size):
        time.sleep(0.02)
        return b"<x/>" * 16384


receive(session, "import.xml", SlowClient(), None, ExchangeSettings(login="1c", password="p"))
"""


def test_a_killed_upload_is_logged_with_what_arrived_and_swept_when_the_session_expires(tmp_path, monkeypatch):
    settings = exchange_settings(tmp_path)
    root = settings.exchange_dir
    with ExchangeLog(settings.exchange_log_path) as log:
        session = open_session(log, root, "127.0.0.1")
    uploader = subprocess.Popen([sys.executable, "-c", UPLOADER, str(root), str(session.id), str(settings.exchange_log_path)],
                                cwd=ROOT)

    def partial():  # a chunk is written beside its upload, under a name of its own (see exchange.uploads)
        return next(session.upload_dir.glob(".*.part"), None)

    wait_for(lambda: partial() and partial().stat().st_size >= 256 * 1024, 30, "the upload to be under way")
    os.kill(uploader.pid, signal.SIGKILL)  # the gunicorn worker dies mid-chunk
    uploader.wait()
    arrived = partial().stat().st_size
    (session.dir / ".state.json.k1ll3d").write_text("{")  # what a kill inside a state write leaves

    sweep_exchange_sessions(settings)
    assert session.dir.is_dir()  # not expired yet: kept
    real = time.time
    monkeypatch.setattr("exchange.sessions.time.time", lambda: real() + 24 * 3600)
    sweep_exchange_sessions(settings)

    assert not session.dir.exists()
    with ExchangeLog(settings.exchange_log_path) as log:
        row = log.session(session.id)
    assert (row["result"], row["bytes"]) == ("expired", arrived) and arrived > 0
    assert row["files"] == [{"name": "import.xml", "bytes": arrived, "interrupted": True}]


def test_a_failed_session_stays_failed_when_it_is_swept(tmp_path, monkeypatch):
    """1C stops after a failure and never sends complete: the sweep must not turn the failure into «expired»."""
    settings = exchange_settings(tmp_path)
    with ExchangeLog(settings.exchange_log_path) as log:
        session = open_session(log, settings.exchange_dir, "127.0.0.1")
        log.update_session(session.id, result="failed", error="Файл import.xml: XML повреждён в строке 3")
    real = time.time
    monkeypatch.setattr("exchange.sessions.time.time", lambda: real() + 24 * 3600)
    sweep_exchange_sessions(settings)
    with ExchangeLog(settings.exchange_log_path) as log:
        row = log.session(session.id)
    assert (row["result"], row["error"]) == ("failed", "Файл import.xml: XML повреждён в строке 3") and row["finished_at"]


def test_the_scheduler_sweeps_sessions_of_an_instance_with_an_exchange(tmp_path, monkeypatch):
    """No 1C logs in again: the scheduler's own sweep logs the expired session and frees its folder."""
    import datetime as dt

    from app import create_app

    settings = exchange_settings(tmp_path)
    with ExchangeLog(settings.exchange_log_path) as log:
        session = open_session(log, settings.exchange_dir, "127.0.0.1")
    (session.upload_dir / "import.xml").write_bytes(b"<x/>")
    real = time.time
    monkeypatch.setattr("exchange.sessions.time.time", lambda: real() + 24 * 3600)  # a day later: expired

    scheduler = start_scheduler(create_app(settings), retry_seconds=None)
    try:
        scheduler.get_job("exchange-sweep").modify(next_run_time=dt.datetime.now(dt.timezone.utc))  # its turn now
        wait_for(lambda: not session.dir.exists(), 30, "the scheduler's sweep of the expired session")
    finally:
        scheduler.shutdown(wait=True)
    with ExchangeLog(settings.exchange_log_path) as log:
        assert log.session(session.id)["result"] == "expired"
