"""A stock webhook's fast path on the MoySklad side: the changed stock from the short report, three requests."""

import datetime as dt

import pytest

from core.clock import MOSCOW
from emulator.harness import client_settings
from moysklad.client import MoySkladClient
from moysklad.stock import apply_stock_changes, read_from, report_moment
from moysklad.sync import STOCK_BOOKMARK, sync_catalog
from store import CatalogReader


def stock_of(store, offer_id):
    with CatalogReader(store.path) as reader:
        return {row[0]: tuple(row[1:]) for row in reader.conn.execute(
            "SELECT warehouse_id, stock, reserve, in_transit FROM stock WHERE offer_id = ?", [offer_id])}


@pytest.fixture
def synced(emulator, store):
    with MoySkladClient(client_settings(emulator)) as client:
        sync_catalog(client, store, full=True)
    return emulator, store


def test_the_changed_stock_comes_from_three_requests_and_only_the_changed_goods_are_named(synced):
    emulator, store = synced
    catalog = emulator.catalog
    good = next(i for i in catalog.items.values() if i.operated and not i.archived)
    other = next(i for i in catalog.items.values() if i.operated and not i.archived and i.id != good.id)
    untouched = stock_of(store, other.id)
    bookmark = store.setting("moysklad", STOCK_BOOKMARK)
    assert bookmark  # the sync left where the stock is known from
    catalog.set_stock(good.id, catalog.stores[1].id, stock=77, reserve=5, in_transit=3)
    emulator.reset_stats()

    with MoySkladClient(client_settings(emulator)) as client:
        update = apply_stock_changes(client, store, None)
    assert update.mode == "changes" and update.changed_since == bookmark
    assert update.offer_ids == [good.id]
    assert update.requests == 3 and emulator.stats_snapshot()["requests"] == 3
    assert stock_of(store, good.id)[catalog.stores[1].id] == (77, 5, 3)
    assert stock_of(store, other.id) == untouched
    assert store.setting("moysklad", STOCK_BOOKMARK) >= bookmark
    assert store.last_run("moysklad", "stock")["requests"] == 3


def test_without_a_bookmark_the_whole_report_is_read_and_every_offer_may_have_changed(emulator, store):
    with MoySkladClient(client_settings(emulator)) as client:
        update = apply_stock_changes(client, store, "2026-01-01 00:00:00")
    assert update.mode == "full" and update.offer_ids is None and update.requests == 3
    assert store.setting("moysklad", STOCK_BOOKMARK)


def test_the_moment_is_the_earlier_of_the_webhook_and_the_bookmark_and_never_too_far_back():
    now = dt.datetime(2026, 3, 2, 12, 0, tzinfo=MOSCOW)
    assert read_from("2026-03-02 11:00:00", "2026-03-02 11:30:00", now) == "2026-03-02 11:00:00"
    assert read_from("2026-03-02 11:45:00", "2026-03-02 11:30:00", now) == "2026-03-02 11:30:00"
    assert read_from(None, "2026-03-02 11:30:00", now) == "2026-03-02 11:30:00"
    assert read_from("2026-03-02 11:45:00", None, now) is None  # no bookmark: read it all
    assert read_from("2026-03-01 11:00:00", "2026-03-02 11:30:00", now) is None  # over 24 h back


def test_only_the_moment_is_taken_from_the_report_url():
    url = "https://api.moysklad.ru/api/remap/1.2/report/stock/all/current?changedSince=2026-03-02 11:00:00"
    assert report_moment(url) == "2026-03-02 11:00:00"
    assert report_moment("https://api.moysklad.ru/api/remap/1.2/report/stock/all/current") is None
    assert report_moment(url.replace("11:00:00", "soon")) is None
    with pytest.raises(ValueError):
        report_moment({"href": url})
