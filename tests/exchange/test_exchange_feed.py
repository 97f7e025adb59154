"""A finished 1C exchange refreshes the exchange feed by itself, and the health page never calls an
outdated exchange feed fresh: the app and its scheduler under a real server, 1C over loopback."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest
import requests
from werkzeug.serving import make_server

from core.settings import FeedSettings
from emulator.harness import wait_for
from scheduler import run_build, start_scheduler
from tests.exchange.test_commerceml import catalog, package
from tests.exchange.test_exchange import OneC, exchange_settings
from tests.orders.test_orders import order_document, status_document

FEED = "shop"


def offers_file(prices: dict[str, str]) -> str:
    return package("".join(f"<Предложение><Ид>{good}</Ид><Наименование>Товар {good}</Наименование><Цены><Цена>"
                           f"<ИдТипаЦены>retail</ИдТипаЦены><ЦенаЗаЕдиницу>{price}</ЦенаЗаЕдиницу></Цена></Цены>"
                           f"<Количество>5</Количество></Предложение>" for good, price in prices.items()))


def one_c_exchange(base: str, prices: dict[str, str], finish: bool = True, shape=str.encode) -> None:
    """1C sends a catalog and its prices and imports both; ``finish`` ends the session as 1C does; ``shape`` makes
    each document the bytes sent."""
    client = OneC(base)
    assert client.checkauth()[0] == "success"
    client.init()
    files = {"import.xml": shape(catalog([(good, f"Товар {good}") for good in prices])),
             "offers.xml": shape(offers_file(prices))}
    for name, data in files.items():
        assert client.send(name, data) == ["success"]
        assert client.import_(name)[0] == ["success"]
    if finish:
        assert client.call("complete") == ["success"]


@pytest.fixture
def shop(tmp_path):
    """The service with one exchange feed whose schedule would rebuild it only every 10 hours."""
    settings = dataclasses.replace(exchange_settings(tmp_path),
                                   feeds=(FeedSettings(name=FEED, source="exchange", pictures="none", min_ratio=0,
                                                       interval_minutes=600),))
    from app import create_app

    app = create_app(settings)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    yield settings, app, base
    scheduler = app.extensions.get("scheduler")
    if scheduler:
        scheduler.shutdown(wait=True)
    server.shutdown()


def served(base: str) -> str:
    response = requests.get(f"{base}/feeds/{FEED}.xml", timeout=10)
    return response.text if response.status_code == 200 else ""


def test_a_finished_exchange_publishes_the_new_catalog_without_any_command(shop):
    settings, app, base = shop
    start_scheduler(app, retry_seconds=None)
    one_c_exchange(base, {"kettle": "1990.00"})
    wait_for(lambda: '<offer id="kettle"' in served(base) and "<price>1990.00</price>" in served(base), 60,
             "the exchange feed to show the imported catalog")

    one_c_exchange(base, {"kettle": "2490.00", "mug": "350.00"})
    wait_for(lambda: "<price>2490.00</price>" in served(base) and '<offer id="mug"' in served(base), 60,
             "the exchange feed to show the new prices")
    assert "<price>1990.00</price>" not in served(base)


def test_imports_without_complete_still_rebuild_once_the_exchange_is_quiet(shop):
    """Older 1C versions never send mode=complete: the rebuild follows the last import by itself."""
    settings, app, base = shop
    start_scheduler(app, retry_seconds=None)
    one_c_exchange(base, {"kettle": "990.00"}, finish=False)
    wait_for(lambda: "<price>990.00</price>" in served(base), 60, "the debounced rebuild after the last import")


def test_a_feed_built_before_the_last_import_is_not_fresh(shop, monkeypatch):
    """Without a scheduler nothing rebuilds: the page must say the feed is outdated, not «свежий»."""
    settings, app, base = shop
    one_c_exchange(base, {"kettle": "1490.00"})  # a catalog never loaded is not published at all
    run_build(settings, settings.feeds[0])
    one_c_exchange(base, {"kettle": "990.00"})
    monkeypatch.setattr("health.collect.CHANGE_GRACE_SECONDS", 0)
    feed = requests.get(base + "/health.json", timeout=10).json()["feeds"][0]
    assert feed["state"] == "stale" and feed["source_changed_at"]
    assert requests.get(base + "/healthz", timeout=10).status_code == 503

    run_build(settings, settings.feeds[0])
    feed = requests.get(base + "/health.json", timeout=10).json()["feeds"][0]
    assert feed["state"] == "fresh" and feed["source_changed_at"] is None


def activity(feed: str, offer_id: str) -> str | None:
    """The offer's productActivity in the served feed ("Y" when it is on sale), None when it is not there."""
    from lxml import etree

    offer = etree.fromstring(feed.encode()).find(f".//offer[@id='{offer_id}']")
    return None if offer is None else offer.findtext("productActivity", "Y")


def test_one_full_catalog_sent_as_several_files_keeps_every_file_on_sale(shop):
    """1C may split a full catalog over import0_1.xml, import0_2.xml in one session: the second file must not
    take the first one's goods off sale; a later session's full file still does for what it lacks."""
    settings, app, base = shop
    client = OneC(base)
    assert client.checkauth()[0] == "success"
    client.init()
    status = status_document(order_document("A-1", **{"Статус заказа": "Собран"}))  # first, orders' statuses back
    assert client.call("file", "POST", data=status, kind="sale", filename="orders.xml") == ["success"]
    for name, good in (("import0_1.xml", "kettle"), ("import0_2.xml", "mug")):
        assert client.send(name, catalog([(good, f"Товар {good}")]).encode()) == ["success"]
        assert client.import_(name)[0] == ["success"]
    assert client.call("complete") == ["success"]
    run_build(settings, settings.feeds[0])
    assert (activity(served(base), "kettle"), activity(served(base), "mug")) == ("Y", "Y")

    one_c_exchange(base, {"kettle": "990.00"})  # the next session's full catalog has no mug
    run_build(settings, settings.feeds[0])
    assert (activity(served(base), "kettle"), activity(served(base), "mug")) == ("Y", "N")


def test_no_feed_is_built_between_two_files_of_one_full_catalog(shop, monkeypatch):
    """A feed built between import0_1.xml and import0_2.xml would show the second file's goods as removed (and
    push them to retailCRM as none available): while the session still sends, the rebuild waits for it."""
    monkeypatch.setattr("scheduler.EXCHANGE_QUIET_SECONDS", 3)
    settings, app, base = shop
    one_c_exchange(base, {"kettle": "990.00", "mug": "350.00"})
    run_build(settings, settings.feeds[0])
    start_scheduler(app, retry_seconds=None)
    client = OneC(base)
    assert client.checkauth()[0] == "success"
    client.init()
    assert client.send("import0_1.xml", catalog([("kettle", "Чайник новый")]).encode()) == ["success"]
    assert client.import_("import0_1.xml")[0] == ["success"]
    second = catalog([("mug", "Кружка")]).encode()
    seen = set()
    for start in range(0, len(second), len(second) // 8 + 1):  # a slow upload: a piece a second, 8 s in all
        assert client.call("file", "POST", data=second[start:start + len(second) // 8 + 1],
                           filename="import0_2.xml") == ["success"]
        for _ in range(5):
            seen.add(activity(served(base), "mug"))
            time.sleep(0.2)
    assert client.import_("import0_2.xml")[0] == ["success"]
    assert client.call("complete") == ["success"]
    wait_for(lambda: "Чайник новый" in served(base), 60, "the rebuild once the session is complete")
    assert seen == {"Y"} and activity(served(base), "mug") == "Y"


def schema_2_03(document: str, changes_only: bool) -> bytes:
    """The document as 1C's schema 2.03 writes it: СодержитТолькоИзменения as the section's last element."""
    flag = f"<СодержитТолькоИзменения>{str(changes_only).lower()}</СодержитТолькоИзменения>"
    for section in ("Каталог", "ПакетПредложений"):
        document = document.replace(f'<{section} СодержитТолькоИзменения="false">', f"<{section}>")
        document = document.replace(f"</{section}>", f"{flag}</{section}>")
    return document.replace('ВерсияСхемы="2.07"', 'ВерсияСхемы="2.03"').encode()


def test_a_2_03_package_of_changes_only_takes_nothing_off_sale(shop):
    """Schema 2.03 says «changes only» with an element, not an attribute: read as a full package, it took every good
    it did not list off sale in retailCRM."""
    settings, app, base = shop
    one_c_exchange(base, {"kettle": "990.00", "mug": "350.00"})
    one_c_exchange(base, {"kettle": "1090.00"}, shape=lambda document: schema_2_03(document, changes_only=True))
    run_build(settings, settings.feeds[0])
    feed = served(base)
    assert "<price>1090.00</price>" in feed
    assert (activity(feed, "kettle"), activity(feed, "mug")) == ("Y", "Y")

    one_c_exchange(base, {"kettle": "1190.00"}, shape=lambda document: schema_2_03(document, changes_only=False))
    run_build(settings, settings.feeds[0])
    assert (activity(served(base), "kettle"), activity(served(base), "mug")) == ("Y", "N")


def units_by_code(document: str) -> bytes:
    """The document as 1C 2.09+ writes units: listed in the classifier, each good naming its unit by code alone."""
    units = ("<ЕдиницыИзмерения><ЕдиницаИзмерения><Ид>0cb615ec-0e44-11e4-ae1d-00155d003d10</Ид>"
             "<НаименованиеКраткое>упа</НаименованиеКраткое><Код>778 </Код><НаименованиеПолное>Упаковка"
             "</НаименованиеПолное></ЕдиницаИзмерения></ЕдиницыИзмерения>")
    document = document.replace("</Группы></Классификатор>", f"</Группы>{units}</Классификатор>")
    return document.replace("</Наименование></Товар>", "</Наименование><БазоваяЕдиница>778</БазоваяЕдиница></Товар>").encode()


def test_a_unit_named_by_its_code_alone_reaches_the_feed(shop):
    """<БазоваяЕдиница>778</БазоваяЕдиница> names a unit of the classifier's ЕдиницыИзмерения: goods sold by the pack
    lost their unit, and retailCRM took them for pieces."""
    settings, app, base = shop
    one_c_exchange(base, {"kettle": "990.00"}, shape=units_by_code)
    run_build(settings, settings.feeds[0])
    assert '<unit code="pack" name="Упаковка" sym="упа"/>' in served(base)
