"""The stock webhook's fast path end to end: set_stock in the MoySklad emulator → its stock webhook over HTTP
to the app → the changed stock read from the short report → the value in the retailCRM emulator."""

import dataclasses
import json
import threading
import time

import pytest
import requests
from werkzeug.serving import make_server

from core.build_pool import BuildPool
from core.mailbox import REBUILD, STOCK
from core.settings import FeedSettings, WebhookSettings
from emulator.harness import wait_for
from feeds.build import build_feed
from retailcrm.push import push_source
from scheduler import MailboxPoller, start_scheduler
from store import open_catalog
from tests.retailcrm.test_push import SITE, crm, pushing_settings  # noqa: F401  (crm is a fixture)

SECRET = "stock-hook-secret-0123456789"
MOYSKLAD_DEADLINE = 1.5


@pytest.fixture
def hook_settings(tmp_path, emulator_factory, crm):  # noqa: F811
    """A pushing feed built at start and then only on webhooks; stock webhooks every 0.3 s."""
    emulator = emulator_factory(products=150, webhook_interval=0.3)
    settings = pushing_settings(tmp_path, emulator, crm)
    main = dataclasses.replace(settings.feeds[0], interval_minutes=24 * 60)
    return emulator, dataclasses.replace(settings, feeds=(main,),
                                         webhooks=WebhookSettings(secret=SECRET, debounce_seconds=1))


@pytest.fixture
def running_app(hook_settings, crm):  # noqa: F811
    """The feed as retailCRM loaded it before, then the app on loopback with its scheduler; yields its base URL."""
    from app import create_app

    _, settings = hook_settings
    build_feed(settings, settings.feeds[0])
    crm.load_icml(settings.data_dir / "feeds" / "main.xml", SITE)
    app = create_app(settings)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    scheduler = start_scheduler(app, retry_seconds=None)
    yield f"http://127.0.0.1:{server.server_port}"
    scheduler.shutdown(wait=True)
    server.shutdown()


def runs_of(settings, source, kind):
    with open_catalog(settings.store_path) as store:
        return store.runs_of(source, kind, 100)


def free(item, store_index):
    return max(item.stock[3 * store_index] - item.stock[3 * store_index + 1], 0)


def test_set_stock_reaches_retailcrm_through_the_stock_webhook_without_a_sync_or_a_render(hook_settings, crm,  # noqa: F811
                                                                                          running_app):
    emulator, settings = hook_settings
    feed = settings.feeds[0]
    wait_for(lambda: [r for r in runs_of(settings, push_source(feed), "push") if r["status"] == "ok"], 60,
             "the push after the build at start")
    builds, syncs = len(runs_of(settings, "feed:main", "build")), len(runs_of(settings, "moysklad", "sync"))
    emulator.webhooks.create("webhookstock", {"url": f"{running_app}/webhooks/moysklad/{SECRET}",
                                              "stockType": "stock", "reportType": "all"})

    catalog = emulator.catalog
    in_bundles = {part for item in catalog.items.values() for part, _ in item.components}
    good = next(i for i in catalog.items.values() if i.kind == "variant" and i.operated and not i.archived
                and crm.stock(SITE, i.id) and i.id not in in_bundles)  # only its own stock changes
    spb = len(catalog.stores) - 1
    catalog.set_stock(good.id, catalog.stores[spb].id, stock=good.stock[3 * spb + 1] + 42)
    wait_for(lambda: crm.stock(SITE, good.id)["spb"]["available"] == 42, 30, "the new stock in retailCRM")
    assert crm.stock(SITE, good.id)["main"]["available"] == sum(free(good, s) for s in range(spb))  # "all": the rest

    delivery = next(d for d in emulator.webhooks.deliveries if d["kind"] == "webhookstock")
    assert delivery["ok"] and delivery["elapsed"] < MOYSKLAD_DEADLINE
    stock_run = runs_of(settings, "moysklad", "stock")[0]
    assert stock_run["status"] == "ok" and stock_run["mode"] == "changes"
    assert stock_run["requests"] <= 4
    push_run = wait_for(lambda: [r for r in runs_of(settings, push_source(feed), "push") if r["mode"] == "stock"], 10,
                        "the fast push's run")[0]
    assert push_run["status"] == "ok" and push_run["counts"]["offers"] == 1
    assert 0 < push_run["counts"]["latency_seconds"] < 30
    assert len(runs_of(settings, "feed:main", "build")) == builds  # no render
    assert len(runs_of(settings, "moysklad", "sync")) == syncs  # no sync

    body = requests.get(running_app + "/health.json", timeout=10).json()
    block = body["feeds"][0]["retailcrm"]
    assert block["last_push"]["mode"] == "stock" and block["last_push"]["latency_seconds"] is not None
    assert block["last_stock_webhook"]["goods"] >= 1
    metrics = requests.get(running_app + "/metrics", timeout=10).text
    assert 'skladbridge_retailcrm_webhook_latency_seconds_count{account="main",feed="main"} 1.0' in metrics


# --- the receiver -------------------------------------------------------------------------------------

@pytest.fixture
def receiver(hook_settings, serve):
    _, settings = hook_settings
    return settings, f"{serve(settings)}/webhooks/moysklad/{SECRET}"


def stock_hook(changed_since="2026-03-01 10:00:00", host="https://api.moysklad.ru/api/remap/1.2"):
    return {"accountId": "a", "stockType": "stock", "reportType": "all",
            "reportUrl": f"{host}/report/stock/all/current?changedSince={changed_since}"}


def post(url, body):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(url, data=data, headers={"Content-Type": "application/json"}, timeout=5)


def test_a_stock_webhook_leaves_a_stock_note_with_the_earliest_moment_and_no_rebuild(receiver):
    settings, url = receiver
    answer = post(url, stock_hook("2026-03-01 10:05:00"))
    assert answer.status_code == 200 and answer.json() == {"ok": True, "rebuild": False, "stock": True}
    post(url, stock_hook("2026-03-01 10:00:00"))
    post(url, stock_hook("2026-03-01 10:09:00", host="http://evil.example"))  # the URL itself is never fetched
    note = settings.mailbox.note(STOCK)
    assert note.payload["changed_since"] == "2026-03-01 10:00:00"
    assert settings.mailbox.note(REBUILD) is None


def test_a_feed_without_a_retailcrm_section_is_rebuilt_on_stock_webhooks_as_before(hook_settings, serve):
    _, settings = hook_settings
    plain = FeedSettings(name="plain", pictures="none")
    settings = dataclasses.replace(settings, feeds=(*settings.feeds, plain))
    answer = post(f"{serve(settings)}/webhooks/moysklad/{SECRET}", stock_hook())
    assert answer.json() == {"ok": True, "rebuild": True, "stock": True}
    assert settings.mailbox.note(REBUILD) is not None and settings.mailbox.note(STOCK) is not None

    class Queue:
        """Where the scheduler puts work (what runs it is not under test here)."""

        def __init__(self):
            self.rebuilds = []

        def submit(self, account, kind, key, run, feeds=(), on_drop=None):
            if kind == REBUILD:
                self.rebuilds.append(list(feeds))

    def queued_rebuilds() -> list[list[str]]:
        """What the scheduler queues for the notes once the debounce passed."""
        queue = Queue()
        time.sleep(settings.webhooks.debounce_seconds + 0.1)
        MailboxPoller(queue, settings).poll()
        return queue.rebuilds

    assert queued_rebuilds() == [["plain"]]  # the pushing feed's stock took the fast path: no sync, no render for it
    post(f"{serve(settings)}/webhooks/moysklad/{SECRET}", stock_hook())
    post(f"{serve(settings)}/webhooks/moysklad/{SECRET}", {"events": [{"meta": {"type": "product"}, "action": "UPDATE"}]})
    assert queued_rebuilds() == [["main", "plain"]]  # a product change is every feed's


def test_webhook_work_a_restart_drops_before_it_starts_waits_for_the_next_scheduler(hook_settings, serve):
    """The scheduler takes a webhook's note when it queues the work; a restart while that work waits behind a running
    build must leave the request in the mailbox, or the change waits for the next scheduled build (an hour)."""
    _, settings = hook_settings
    settings = dataclasses.replace(settings, feeds=(*settings.feeds, FeedSettings(name="plain", pictures="none")))
    url = f"{serve(settings)}/webhooks/moysklad/{SECRET}"
    post(url, stock_hook("2026-03-01 10:00:00"))
    post(url, {"events": [{"meta": {"type": "product"}, "action": "DELETE"}]})
    pool, busy = BuildPool(1), threading.Event()
    pool.submit("", "scheduled", "main", lambda: busy.wait(30))  # the account's build that runs now
    time.sleep(settings.webhooks.debounce_seconds + 0.1)
    MailboxPoller(pool, settings).poll()
    assert settings.mailbox.notes() == [] and len(pool.snapshot()["waiting"]) == 2  # taken, queued behind the build
    post(url, stock_hook("2026-03-01 10:30:00"))  # one more arrives meanwhile
    pool.shutdown(wait=False)  # systemctl restart
    busy.set()
    rebuild, stock = settings.mailbox.note(REBUILD), settings.mailbox.note(STOCK)
    assert rebuild.payload["feeds"] == ["main", "plain"] and rebuild.payload["full"] is True  # the deletion's full sync
    assert stock.payload["changed_since"] == "2026-03-01 10:00:00"  # the earliest of both


@pytest.mark.parametrize("body", [b"{not json", json.dumps({"reportUrl": 5}).encode(), b"[]"])
def test_a_malformed_stock_webhook_is_a_400_and_leaves_nothing(receiver, body):
    settings, url = receiver
    answer = post(url, body)
    assert answer.status_code == 400 and answer.json()["error"]
    assert settings.mailbox.notes() == []


def test_an_oversized_stock_webhook_is_a_413_and_leaves_nothing(receiver):
    settings, url = receiver
    answer = post(url, json.dumps(stock_hook()).encode() + b" " * (1024 * 1024))
    assert answer.status_code == 413
    assert settings.mailbox.notes() == []
