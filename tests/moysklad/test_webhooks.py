"""MoySklad webhooks over real HTTP: the secret path, quick answers, one debounced rebuild per burst."""

import dataclasses
import json
import os
import threading
import time

import pytest
import requests
from lxml import etree
from werkzeug.serving import make_server

from core.mailbox import REBUILD
from core.settings import FeedSettings, Settings, WebhookSettings
from emulator.harness import client_settings, wait_for
from scheduler import start_scheduler
from store import CatalogStore

SECRET = "s3cret-hook-path-0123456789"
MOYSKLAD_DEADLINE = 1.5  # seconds MoySklad waits for an answer


@pytest.fixture
def app_settings(tmp_path, emulator_factory) -> Settings:
    """A moysklad feed built once at start and then only on webhooks (its interval is a day)."""
    return Settings(data_dir=tmp_path / "data", moysklad=client_settings(emulator_factory(products=60)),
                    feeds=(FeedSettings(name="main", pictures="none", interval_minutes=24 * 60),),
                    webhooks=WebhookSettings(secret=SECRET, debounce_seconds=1))


def hook_url(base: str, secret: str = SECRET) -> str:
    return f"{base}/webhooks/moysklad/{secret}"


def post(url: str, body, **kwargs) -> requests.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(url, data=data, headers={"Content-Type": "application/json"}, timeout=5, **kwargs)


def builds(settings: Settings, source: str = "feed:main", kind: str = "build") -> list[dict]:
    """The runs of one source and kind (the main feed's builds by default), newest first."""
    store = CatalogStore(settings.store_path)
    try:
        return [run for run in store.recent_runs(100) if run["source"] == source and run["kind"] == kind]
    finally:
        store.close()


def product_event(action="UPDATE", kind="product") -> dict:
    return {"events": [{"meta": {"type": kind, "href": f"https://api.moysklad.ru/api/remap/1.2/entity/{kind}/1"},
                        "action": action, "accountId": "a"}]}


def test_a_wrong_or_missing_secret_is_not_found(live_app, app_settings):
    assert post(hook_url(live_app, "wrong"), product_event()).status_code == 404
    assert post(hook_url(live_app, SECRET[:-1]), product_event()).status_code == 404
    assert app_settings.mailbox.note(REBUILD) is None


def test_without_a_configured_secret_the_receiver_is_off(app_settings):
    from app import create_app

    app = create_app(dataclasses.replace(app_settings, webhooks=WebhookSettings()))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        assert post(f"{base}/webhooks/moysklad/", product_event()).status_code == 404
        assert post(hook_url(base, "anything"), product_event()).status_code == 404
    finally:
        server.shutdown()


def test_the_vendor_example_asks_for_a_rebuild_within_the_deadline(live_app, app_settings, shared_fixtures):
    payload = (shared_fixtures / "moysklad" / "webhook_payload_example.json").read_bytes()
    started = time.monotonic()
    response = post(hook_url(live_app), payload)
    assert time.monotonic() - started < MOYSKLAD_DEADLINE
    assert response.status_code == 200 and response.json() == {"ok": True, "rebuild": True, "stock": False}
    assert app_settings.mailbox.note(REBUILD) is not None


def test_the_vendor_stock_example_asks_for_a_rebuild(live_app, app_settings, shared_fixtures):
    payload = (shared_fixtures / "moysklad" / "webhookstock_payload_example.json").read_bytes()
    assert post(hook_url(live_app), payload).json()["rebuild"] is True
    assert app_settings.mailbox.note(REBUILD) is not None


@pytest.mark.parametrize("action", ["CREATE", "DELETE"])
@pytest.mark.parametrize("kind", ["variant", "productfolder", "service", "bundle"])
def test_every_catalog_entity_asks_for_a_rebuild(live_app, app_settings, kind, action):
    """The note the scheduler acts on, not only the answer: a deletion of any of them needs the full sync (an
    incremental one never sees what is gone)."""
    assert post(hook_url(live_app), product_event(action, kind)).json() == {"ok": True, "rebuild": True, "stock": False}
    note = app_settings.mailbox.note(REBUILD)
    assert (note.payload["feeds"], note.payload["full"]) == (["main"], action == "DELETE")


def test_changes_the_feeds_do_not_show_ask_for_nothing(live_app, app_settings):
    response = post(hook_url(live_app), product_event("CREATE", "customerorder"))
    assert response.status_code == 200 and response.json() == {"ok": True, "rebuild": False, "stock": False}
    assert app_settings.mailbox.note(REBUILD) is None


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'{"events": "product"}', b"\xff\xfe", b"[" * 200_000])
def test_a_malformed_body_is_a_400_with_a_json_error(live_app, body):
    response = post(hook_url(live_app), body)
    assert response.status_code == 400
    assert response.json()["error"]


def test_a_body_over_one_megabyte_is_refused(live_app, app_settings):
    response = post(hook_url(live_app), b'{"events": []}' + b" " * (1024 * 1024))
    assert response.status_code == 413
    assert app_settings.mailbox.note(REBUILD) is None


def test_the_secret_never_reaches_the_log(live_app, caplog):
    caplog.set_level("INFO", logger="webhooks")
    post(hook_url(live_app), product_event())
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name != "werkzeug")  # the test server's access log
    assert "/webhooks/moysklad/***" in ours
    assert SECRET not in ours


def test_a_burst_of_webhooks_makes_one_rebuild_after_the_debounce(app, live_app, app_settings):
    running = start_scheduler(app, retry_seconds=None)
    try:
        first = wait_for(lambda: [b for b in builds(app_settings) if b["status"] == "ok"], 30, "the build at start")
        assert len(first) == 1

        slowest = 0.0
        for _ in range(20):  # 3 s of changes, each within the 1 s debounce of the previous one
            started = time.monotonic()
            assert post(hook_url(live_app), product_event()).status_code == 200
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(0.15)
        assert slowest < MOYSKLAD_DEADLINE
        assert len(builds(app_settings)) == 1  # nothing while the changes keep coming

        wait_for(lambda: len(builds(app_settings)) == 2 and builds(app_settings)[0]["status"] == "ok", 15,
                 "the rebuild after the debounce")
        time.sleep(4)  # two more polls: the burst must not cause a second rebuild
        assert [b["status"] for b in builds(app_settings)] == ["ok", "ok"]
        assert app_settings.mailbox.note(REBUILD) is None
    finally:
        running.shutdown(wait=True)



def test_a_webhook_asked_for_before_the_clock_was_set_back_does_not_wait_for_the_clock_to_catch_up(app, live_app,
                                                                                                    app_settings):
    """The debounce counts from the note's time: after the clock is set back (an NTP step at boot, an operator's fix)
    a note written before reads as asked for in the future, and its rebuild waited until the clock got there again."""
    assert post(hook_url(live_app), product_event()).json()["rebuild"] is True
    note = app_settings.mailbox.note(REBUILD)
    later = time.time() + 3600  # written an hour "later" than now: the clock has gone back an hour since
    os.utime(note.path, (later, later))
    running = start_scheduler(app, retry_seconds=None)
    try:
        wait_for(lambda: app_settings.mailbox.note(REBUILD) is None, 15, "the rebuild to be taken from the mailbox")
        wait_for(lambda: len(builds(app_settings)) == 2 and all(b["status"] == "ok" for b in builds(app_settings)), 30,
                 "the start-up build and the webhook's rebuild")
    finally:
        running.shutdown(wait=True)


def syncs(settings: Settings) -> list[dict]:
    return builds(settings, "moysklad", "sync")


def test_a_deleted_good_leaves_the_feed_at_the_rebuild_its_webhook_asks_for(tmp_path, emulator_factory, serve):
    """An incremental sync reads what changed, never what is gone: the DELETE webhook's rebuild syncs the whole
    catalog, or the deleted good sells on (price and stock in the feed) until the daily full sync."""
    from app import create_app

    emulator = emulator_factory(products=60)
    app_settings = Settings(data_dir=tmp_path / "data", moysklad=client_settings(emulator),
                            feeds=(FeedSettings(name="main", pictures="none", interval_minutes=24 * 60),),
                            webhooks=WebhookSettings(secret=SECRET, debounce_seconds=1))
    live_app = serve(app_settings)
    running = start_scheduler(create_app(app_settings), retry_seconds=None)
    try:
        wait_for(lambda: [b for b in builds(app_settings) if b["status"] == "ok"], 30, "the build at start")
        catalog = emulator.catalog
        gone = next(i for i in catalog.items.values() if i.kind == "product" and not i.variant_ids and not i.archived)
        feed = app_settings.feeds_dir / "main.xml"
        assert etree.parse(str(feed)).find(f".//offer[@id='{gone.id}']").findtext("productActivity") is None
        catalog.delete_item(gone.id)
        event = {"events": [{"meta": {"type": "product", "href": f"{emulator.base_url}/entity/product/{gone.id}"},
                             "action": "DELETE", "accountId": "a"}]}
        assert post(hook_url(live_app), event).json()["rebuild"] is True
        wait_for(lambda: len(builds(app_settings)) == 2 and builds(app_settings)[0]["status"] == "ok", 30,
                 "the rebuild after the webhook")
        assert [run["mode"] for run in syncs(app_settings)] == ["full", "full"]  # the first build's, then this one's
        offer = etree.parse(str(feed)).find(f".//offer[@id='{gone.id}']")
        assert offer.findtext("productActivity") == "N" and offer.get("quantity") == "0"

        post(hook_url(live_app), product_event())  # an ordinary change still syncs only what changed
        wait_for(lambda: len(builds(app_settings)) == 3 and builds(app_settings)[0]["status"] == "ok", 30, "the next rebuild")
        assert syncs(app_settings)[0]["mode"] == "incremental"
    finally:
        running.shutdown(wait=True)
