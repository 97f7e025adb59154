"""Background jobs: the periodic MoySklad sync, run by exactly one process per data directory."""

from __future__ import annotations

import datetime as dt
import fcntl
import logging

from apscheduler.schedulers.background import BackgroundScheduler

from moysklad.connect import open_client
from moysklad.errors import MoySkladError
from moysklad.sync import sync_catalog
from settings import Settings
from store import CatalogStore, StoreError

log = logging.getLogger(__name__)

_lock_handle = None  # held open for the life of the process that owns the scheduler


def start_scheduler(app) -> BackgroundScheduler | None:
    """Start the jobs unless another process (another gunicorn worker) already runs them."""
    global _lock_handle
    settings: Settings = app.config["SETTINGS"]
    handle = open(settings.data_dir / "scheduler.lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        log.info("another process runs the scheduler for %s", settings.data_dir)
        return None
    _lock_handle = handle
    scheduler = BackgroundScheduler(timezone=dt.timezone.utc)
    scheduler.add_job(
        run_sync, "interval", minutes=settings.moysklad.sync_interval_minutes, args=[settings],
        id="moysklad-sync", next_run_time=dt.datetime.now(dt.timezone.utc), max_instances=1, coalesce=True,
    )
    scheduler.start()
    log.info("scheduler started: MoySklad sync every %d min", settings.moysklad.sync_interval_minutes)
    return scheduler


def run_sync(settings: Settings) -> None:
    """One scheduled sync; a failure is recorded in the runs table and logged, never raised."""
    ms = settings.moysklad
    client = open_client(ms)
    try:
        store = CatalogStore(settings.store_path)
        try:
            result = sync_catalog(client, store, overlap_minutes=ms.overlap_minutes, full_sync_hours=ms.full_sync_hours)
        finally:
            store.close()
        log.info("sync #%d (%s) ok in %.1fs: %s; %d requests, %d throttled",
                 result.run_id, result.mode, result.seconds, result.counts, result.requests, result.throttled)
    except (MoySkladError, StoreError) as exc:
        log.error("sync failed, the catalog store is unchanged: %s", exc)
    finally:
        client.close()
