"""Stopping the service (systemctl stop or restart, SIGTERM to gunicorn) while a build runs: the scheduling
worker stops its scheduler the way it is meant to stop, so the work still waiting for its turn is asked for
again in the mailbox, the next scheduler does it, and the log says nothing alarming."""

from __future__ import annotations

import json
import signal

import pytest
import requests

from core.mailbox import REBUILD, Mailbox
from emulator.harness import wait_for

pytestmark = pytest.mark.e2e

SECRET = "w" * 24


def test_a_stop_during_a_build_keeps_the_waiting_rebuild_and_logs_no_traceback(site):
    shop = site(extra=f"webhooks:\n  secret: {SECRET}\n  debounce_seconds: 1\n")
    shop.wait_published()
    shop.faults(latency_ms=1500)  # the next build's sync takes some 15 s: the stop comes while it runs
    mailbox = Mailbox(shop.gunicorn.data_dir)
    mailbox.post("build", "main")  # the health page's button, as its POST leaves it
    wait_for(lambda: shop.feed_health()["building"], 60, "the asked-for build to start")

    gone = next(item for item in shop.emulator.catalog.items.values() if item.kind == "product")
    event = {"events": [{"meta": {"type": "product", "href": f"{shop.emulator.base_url}/entity/product/{gone.id}"},
                         "action": "DELETE", "accountId": "a"}]}
    reply = requests.post(f"{shop.base}/webhooks/moysklad/{SECRET}", data=json.dumps(event), timeout=30,
                          headers={"Content-Type": "application/json"})
    assert reply.json()["rebuild"] is True
    # the scheduler takes the note and queues the (full) rebuild behind the running build
    wait_for(lambda: any(work["kind"] == REBUILD for work in (shop.health()["queue"] or {}).get("waiting_works", ())),
             30, "the webhook's rebuild to wait in the build queue")
    assert mailbox.note(REBUILD) is None

    shop.gunicorn.process.send_signal(signal.SIGTERM)
    shop.gunicorn.process.wait(timeout=120)

    note = mailbox.note(REBUILD)  # asked for again: the next scheduler syncs the whole catalog for the deletion
    assert note is not None and note.payload.get("full") is True, shop.gunicorn.log()[-3000:]
    log = shop.gunicorn.log()
    assert "Traceback" not in log and "Error submitting job" not in log, log[-3000:]
