"""The scheduler runs in exactly one process per data directory and syncs at once on start."""

import time

from scheduler import start_scheduler
from store import CatalogStore


def test_only_the_first_process_gets_the_scheduler_and_it_syncs_at_once(app, app_settings, emulator):
    first = start_scheduler(app)
    try:
        assert first is not None
        assert start_scheduler(app) is None  # a second gunicorn worker on the same data dir
        store = CatalogStore(app_settings.store_path)
        deadline = time.monotonic() + 30
        while not (store.last_run("moysklad", "sync", "ok")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert store.last_run("moysklad", "sync", "ok")["mode"] == "full"
        assert store.counts("moysklad")["offers"] == len(emulator.catalog.items)
        store.close()
    finally:
        first.shutdown(wait=True)
