"""Pushes to retailCRM over loopback with both emulators: what the feed says, only changes, batches, faults."""

import dataclasses

import pytest
import requests
from lxml import etree

from core.settings import ConfigError, FeedSettings, PriceTarget, RetailCrmSettings, Settings, StoreTarget, load_settings
from emulator.harness import client_settings
from emulator.retailcrm import INVENTORIES, PRICES, RetailCrmEmulator
from feeds.build import build_feed
from retailcrm.client import RetailCrmClient
from retailcrm.errors import KeyRejected, ServerFailure, TransportFailure, UnknownReference
from retailcrm.push import MappingError, push_feed, push_source
from scheduler import run_build
from store import open_catalog

KEY = "rcrm-key-0123456789"
SITE = "shop"


@pytest.fixture
def crm():
    server = RetailCrmEmulator(api_key=KEY, sites=(SITE,)).start()
    yield server
    server.stop()


def crm_client(crm, **overrides) -> RetailCrmClient:
    """A client with short back-off, so fault tests stay quick (the service's own waits longer)."""
    options = dict(retry_base_delay=0.02, retry_max_delay=0.2, connect_timeout=2, read_timeout=5, max_retries=3)
    options.update(overrides)
    return RetailCrmClient(crm.base_url, KEY, **options)


def pushing_settings(tmp_path, emulator, crm, **crm_options) -> Settings:
    """Feed "main" pushes to retailCRM: warehouse spb = the St Petersburg warehouse, main = all the others ("all" beside
    another target is the rest: retailCRM adds its warehouses up), wholesale prices. Feed "spb" publishes that
    warehouse and price type in its ICML file, feed "rest" the other warehouses: what the feeds say for them."""
    catalog = emulator.catalog
    spb, wholesale = catalog.stores[-1].name, catalog.price_types[1].name
    options = dict(url=crm.base_url, api_key=KEY, site=SITE, stores=(StoreTarget("main"), StoreTarget("spb", (spb,))),
                   prices=(PriceTarget("wholesale", wholesale),))
    options.update(crm_options)
    return Settings(data_dir=tmp_path / "data", moysklad=client_settings(emulator), public_url="https://feeds.example",
                    feeds=(FeedSettings(name="main", pictures="none", retailcrm=RetailCrmSettings(**options)),
                           FeedSettings(name="spb", pictures="none", stores=(spb,), price_type=wholesale),
                           FeedSettings(name="rest", pictures="none", stores=tuple(s.name for s in catalog.stores[:-1]))))


def build_others(settings: Settings) -> None:
    """The feeds that say what the pushing one must send, from the store the main build synced."""
    for feed in settings.feeds[1:]:
        build_feed(settings, feed, sync=False)


def build_and_load(settings: Settings, crm) -> dict:
    """Build every feed, let retailCRM load the main one (as it does every 3 hours); the main feed's offers by id."""
    build_feed(settings, settings.feeds[0])
    build_others(settings)
    crm.load_icml(feed_file(settings, "main"), SITE)
    return offers(settings, "main")


def feed_file(settings: Settings, name: str):
    return settings.data_dir / "feeds" / f"{name}.xml"


def offers(settings: Settings, name: str) -> dict:
    return {o.get("id"): o for o in etree.parse(str(feed_file(settings, name))).iterfind(".//offer")}


def push(settings, crm, **kwargs):
    with crm_client(crm) as client:
        return push_feed(settings, settings.feeds[0], client=client, **kwargs)


def number(text):
    return float(text) if text is not None else None


def to_send(settings: Settings) -> tuple[set, set]:
    """The main feed's offers with stock to push, and those with a wholesale price to push (a price of 0 is none)."""
    main, spb = offers(settings, "main"), offers(settings, "spb")
    return ({o for o, offer in main.items() if offer.get("quantity") is not None},
            {o for o in main if number(spb[o].findtext("price"))})


def reserved_without_warehouse(settings: Settings) -> dict[str, float]:
    """Per offer, what orders reserved without a warehouse (MoySklad's row with storeId null, stored as warehouse "").
    retailCRM's main, the rest, holds it; the feed "rest", which names its warehouses, cannot."""
    if settings.feeds[0].quantity == "stock":
        return {}
    with open_catalog(settings.store_path) as store:
        return dict(store.db.execute("SELECT offer_id, reserve FROM stock WHERE warehouse_id = ''").fetchall())


def assert_crm_says_what_the_feeds_say(settings, crm, services=True):
    main, spb, rest = offers(settings, "main"), offers(settings, "spb"), offers(settings, "rest")
    unbound = reserved_without_warehouse(settings)
    checked = {"stock": 0, "service": 0, "inactive": 0, "price": 0, "no price": 0}
    for offer_id, offer in main.items():
        stock, prices = crm.stock(SITE, offer_id), crm.prices(SITE, offer_id)
        if offer.get("quantity") is None:  # services (and bundles) carry no stock in the feed: none is pushed
            assert stock == {}, offer_id
            checked["service"] += 1
        else:
            purchase = number(offer.findtext("purchasePrice"))
            rest_available = float(rest[offer_id].get("quantity"))
            if offer_id in unbound:
                rest_available = pytest.approx(max(rest_available - unbound[offer_id], 0))
            assert stock["main"]["available"] == rest_available, offer_id
            assert stock["spb"]["available"] == float(spb[offer_id].get("quantity")), offer_id
            assert stock["main"].get("purchasePrice") == purchase == stock["spb"].get("purchasePrice"), offer_id
            checked["stock"] += 1
            checked["inactive"] += offer.findtext("productActivity") == "N"
        wholesale = number(spb[offer_id].findtext("price")) or None  # 0: not filled in MoySklad, no price in retailCRM
        assert prices.get("wholesale") == wholesale, offer_id
        checked["price" if wholesale is not None else "no price"] += 1
    assert checked["stock"] and checked["price"] and (checked["service"] or not services), checked
    return checked


def test_a_full_push_equals_what_the_feed_says_per_offer_warehouse_and_price_type(tmp_path, emulator, crm):
    catalog = emulator.catalog
    archived = next(i for i in catalog.items.values() if i.kind == "product" and not i.variant_ids and not i.archived
                    and i.operated and i.stock[0] - i.stock[1] > 0)
    catalog.update_item(archived.id, archived=True)
    settings = pushing_settings(tmp_path, emulator, crm)
    published = build_and_load(settings, crm)
    result = push(settings, crm)
    assert assert_crm_says_what_the_feeds_say(settings, crm)["inactive"]
    # archived goods are published with productActivity N and 0 available, and pushed the same
    assert published[archived.id].findtext("productActivity") == "N" and published[archived.id].get("quantity") == "0"
    assert crm.stock(SITE, archived.id)["main"]["available"] == 0
    stocked, priced = to_send(settings)  # an offer with no stock to show and no wholesale price has nothing to send
    assert len(stocked | priced) < len(published) and result.offers == len(stocked | priced)
    assert result.not_found == 0 and result.waiting == 0
    stats = crm.stats_snapshot()
    assert stats["rate_limited"] == 0 and stats["max_upload_items"] <= 250
    assert stats["status"] == {"200": result.requests}
    with open_catalog(settings.store_path) as store:
        run = store.last_run(push_source(settings.feeds[0]), "push")
    assert run["status"] == "ok" and run["counts"]["records"] == result.records and run["requests"] == result.requests


def test_after_a_push_only_what_changed_is_sent(tmp_path, emulator, crm):
    settings = pushing_settings(tmp_path, emulator, crm)
    build_and_load(settings, crm)
    push(settings, crm)
    crm.reset_stats()
    assert push(settings, crm).requests == 0  # nothing changed: nothing sent

    catalog = emulator.catalog
    good = next(i for i in catalog.items.values() if i.kind == "product" and i.stocked and not i.variant_ids
                and not i.archived and i.operated)
    catalog.set_stock(good.id, catalog.stores[-1].id, stock=good.stock[-3] + 7)
    priced = next(i for i in catalog.items.values() if i.kind == "service" and not i.archived)
    catalog.update_item(priced.id, sale_prices=(priced.sale_prices[0], 4321_00.0, *priced.sale_prices[2:]))
    build_feed(settings, settings.feeds[0])
    build_others(settings)
    result = push(settings, crm)

    assert result.offers == 2 and result.batches == 2
    assert crm.stats_snapshot()["by_path"] == {INVENTORIES: 1, PRICES: 1}
    assert crm.prices(SITE, priced.id)["wholesale"] == 4321
    assert_crm_says_what_the_feeds_say(settings, crm)

    catalog.update_item(priced.id, sale_prices=(priced.sale_prices[0], 0.0, *priced.sale_prices[2:]))  # cleared
    build_feed(settings, settings.feeds[0])
    build_others(settings)
    crm.reset_stats()
    assert push(settings, crm).offers == 1
    assert "wholesale" not in crm.prices(SITE, priced.id)  # removed, not a price of 0 an operator could sell at

    crm.reset_stats()
    everything = push_feed(settings, settings.feeds[0], full=True, client=crm_client(crm))
    assert everything.offers == len(set.union(*to_send(settings)))  # --full sends everything again


def test_a_price_of_another_type_outside_retailcrms_range_is_not_pushed_and_is_named_in_the_log(tmp_path, emulator,
                                                                                                 crm, caplog):
    """The ICML file leaves out an offer whose price retailCRM cannot hold (over 99,999,999); a wholesale price that
    size, a typo in MoySklad, must not go out either (the batch it sits in would be refused), and says so."""
    settings = pushing_settings(tmp_path, emulator, crm)
    catalog = emulator.catalog
    priced = next(i for i in catalog.items.values() if i.kind == "service" and not i.archived)
    catalog.update_item(priced.id, sale_prices=(priced.sale_prices[0], 4321_00.0, *priced.sale_prices[2:]))
    build_and_load(settings, crm)
    push(settings, crm)
    catalog.update_item(priced.id, sale_prices=(priced.sale_prices[0], 150_000_000_00.0, *priced.sale_prices[2:]))
    build_feed(settings, settings.feeds[0])
    build_others(settings)
    crm.reset_stats()
    assert push(settings, crm).offers == 0 and crm.stats_snapshot()["by_path"] == {}
    assert crm.prices(SITE, priced.id)["wholesale"] == 4321  # as it was, not 150,000,000
    assert f"1 prices outside retailCRM's range (0 … 99,999,999) not pushed, e.g. offer {priced.id}" in caplog.text


def test_a_10000_offer_full_push_goes_in_batches_of_250_without_tripping_the_rate_limit(tmp_path, emulator_factory, crm):
    emulator = emulator_factory(products=13_500, seed=3)
    settings = pushing_settings(tmp_path, emulator, crm)
    published = build_and_load(settings, crm)
    assert len(published) >= 10_000
    with RetailCrmClient(crm.base_url, KEY) as client:  # the service's own settings
        result = push_feed(settings, settings.feeds[0], client=client)
        assert client.throttled == 0 and client.retries == 0
    stats = crm.stats_snapshot()
    assert stats["rate_limited"] == 0 and set(stats["status"]) == {"200"}
    assert stats["max_upload_items"] == 250
    stocked, priced = to_send(settings)
    assert stats["by_path"] == {INVENTORIES: -(-len(stocked) // 250), PRICES: -(-len(priced) // 250)}
    assert result.offers == len(stocked | priced) and result.not_found == 0


def test_offers_retailcrm_does_not_know_yet_wait_and_go_out_once_it_loads_the_feed(tmp_path, emulator, crm):
    settings = pushing_settings(tmp_path, emulator, crm)
    build_feed(settings, settings.feeds[0])
    build_others(settings)
    published = offers(settings, "main")
    known = sorted(published)[: len(published) // 2]
    crm.load_icml(b"<yml_catalog><shop><offers>" + b"".join(f'<offer id="{i}"/>'.encode() for i in known)
                  + b"</offers></shop></yml_catalog>", SITE)

    first = push(settings, crm)
    sent = set.union(*to_send(settings))
    assert first.not_found == len(sent - set(known)) == first.waiting
    assert first.offers == len(sent & set(known))
    with open_catalog(settings.store_path) as store:
        assert store.waiting_offers("main") == first.waiting
        assert store.last_run(push_source(settings.feeds[0]), "push")["status"] == "ok"  # not an error

    crm.load_icml(feed_file(settings, "main"), SITE)  # retailCRM loads the ICML file
    second = push(settings, crm)
    assert second.offers == first.waiting and second.not_found == 0 and second.waiting == 0
    assert_crm_says_what_the_feeds_say(settings, crm)


def test_offers_the_feed_skips_for_an_xml_id_too_long_are_not_pushed(tmp_path, emulator, crm):
    """The ICML file leaves them out, so retailCRM never knows them: sent, they would wait forever."""
    settings = pushing_settings(tmp_path, emulator, crm)
    main = dataclasses.replace(settings.feeds[0], xml_id="{product.externalCode}#{externalCode}")
    settings = dataclasses.replace(settings, feeds=(main, *settings.feeds[1:]))
    product = next(i for i in emulator.catalog.items.values() if i.kind == "product" and len(i.variant_ids) > 1
                   and not i.archived)
    emulator.catalog.update_item(product.id, external_code="P" * 250)
    published = build_and_load(settings, crm)
    assert published and not set(product.variant_ids) & set(published)
    result = push(settings, crm)
    assert result.offers > 0 and result.not_found == 0 and result.waiting == 0
    assert_crm_says_what_the_feeds_say(settings, crm)


def test_a_warehouse_is_counted_once_in_retailcrm_which_adds_its_warehouses_up(tmp_path, emulator, crm):
    """README's example maps main: all and spb: [Склад Питер]. retailCRM's total stock is the sum over its warehouses:
    "all" beside spb is every warehouse but Питер, or an operator sees (and sells) Питер's goods twice."""
    settings = pushing_settings(tmp_path, emulator, crm)
    build_and_load(settings, crm)
    push(settings, crm)
    spb, rest, counted = offers(settings, "spb"), offers(settings, "rest"), 0
    for offer_id, offer in offers(settings, "main").items():  # the ICML file's quantity: every warehouse, once
        if float(rest[offer_id].get("quantity") or 0) > 0 and float(spb[offer_id].get("quantity") or 0) > 0:
            stock = crm.stock(SITE, offer_id)  # (both parts above 0: neither was a negative sum shown as 0)
            assert stock["main"]["available"] + stock["spb"]["available"] == pytest.approx(float(offer.get("quantity")))
            counted += 1
    assert counted > 10 and len(emulator.catalog.stores) > 2
    config = tmp_path / "config.yaml"  # two lists sharing a warehouse cannot mean "the rest": a config error
    config.write_text("moysklad: {token: t}\nfeeds: [{name: main, retailcrm: {url: https://a.retailcrm.ru, api_key: k, "
                      "site: s, stores: {spb: [Склад Питер], north: [Склад Питер, Мурманск]}}}]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"feeds\[0\]\.retailcrm\.stores\.north: «Склад Питер» is summed into spb already"):
        load_settings(config, environ={})



def test_all_is_the_warehouses_the_feed_counts_not_every_warehouse_of_the_account(tmp_path, emulator, crm):
    """A feed that publishes one warehouse (the others hold defects, a supplier's goods) and maps main: all must show
    in retailCRM the stock its ICML file shows, not the stock of warehouses it leaves out."""
    own = emulator.catalog.stores[0].name
    settings = pushing_settings(tmp_path, emulator, crm, stores=(StoreTarget("main"),), prices=())
    settings = dataclasses.replace(settings, feeds=(dataclasses.replace(settings.feeds[0], stores=(own,)),
                                                    FeedSettings(name="every", pictures="none")))
    published = build_and_load(settings, crm)
    push(settings, crm)
    every, differs = offers(settings, "every"), 0
    for offer_id, offer in published.items():
        if offer.get("quantity") is not None:
            assert crm.stock(SITE, offer_id)["main"]["available"] == float(offer.get("quantity")), offer_id
            differs += offer.get("quantity") != every[offer_id].get("quantity")
    assert differs > 10  # the warehouses the feed leaves out hold stock the push must leave out too
    config = tmp_path / "config.yaml"  # a warehouse the feed leaves out, mapped by name: a config error
    config.write_text("moysklad: {token: t}\nfeeds: [{name: main, stores: [Основной склад], retailcrm: {url: https://a.retailcrm.ru, "
                      "api_key: k, site: s, stores: {spb: [Склад Питер]}}}]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"feeds\[0\]\.retailcrm\.stores\.spb: warehouse «Склад Питер» is not among "
                                          r"the feed's stores \(Основной склад\); retailCRM would show stock the feed leaves out"):
        load_settings(config, environ={})


# --- faults ------------------------------------------------------------------------------------------

def failed_push(settings, crm, error, **client_options):
    with crm_client(crm, **client_options) as client, pytest.raises(error) as caught:
        push_feed(settings, settings.feeds[0], client=client)
    with open_catalog(settings.store_path) as store:
        run = store.last_run(push_source(settings.feeds[0]), "push")
    assert run["status"] == "failed" and run["error"] == str(caught.value)
    return caught.value, run


def test_retailcrm_down_mid_push_loses_nothing_and_the_next_push_sends_the_rest(tmp_path, emulator_factory, crm):
    settings = pushing_settings(tmp_path, emulator_factory(products=1200), crm)
    published = build_and_load(settings, crm)
    assert len(published) > 500

    def down_after_the_first_batch(kind, sent, total):
        crm.faults.outage = True

    with crm_client(crm) as client, pytest.raises(ServerFailure):
        push_feed(settings, settings.feeds[0], client=client, progress=down_after_the_first_batch)
    with open_catalog(settings.store_path) as store:
        run = store.last_run(push_source(settings.feeds[0]), "push")
    assert run["status"] == "failed" and run["counts"]["batches"] == 1 and run["counts"]["offers"] == 250
    assert run["counts"]["advice"]["title"] == "retailCRM временно не отвечает"
    assert feed_file(settings, "main").exists()  # the feed is unaffected

    crm.faults.outage = False
    crm.reset_stats()
    rest = push(settings, crm)
    stocked, priced = to_send(settings)  # every price was still to send; stock after the first 250 offers (by id)
    assert rest.offers == len(set(sorted(stocked)[250:]) | priced)
    assert crm.stats_snapshot()["by_path"][INVENTORIES] == -(-(len(stocked) - 250) // 250)
    assert_crm_says_what_the_feeds_say(settings, crm)


def test_a_stock_push_that_failed_goes_out_with_the_next_one_whatever_goods_that_one_is_about(tmp_path, emulator, crm):
    """A stock webhook's push names only the goods that changed: one that failed must not leave its goods behind
    until the next build (an hour by default) just because the next webhook is about other goods."""
    settings = pushing_settings(tmp_path, emulator, crm)
    build_and_load(settings, crm)
    push(settings, crm)
    catalog = emulator.catalog
    first, second = [i for i in catalog.items.values() if i.kind == "product" and i.stocked and not i.variant_ids
                     and not i.archived and i.operated][:2]

    def stock_moves(good):
        catalog.set_stock(good.id, catalog.stores[-1].id, stock=good.stock[-3] + 7)
        build_feed(settings, settings.feeds[0])
        build_others(settings)

    stock_moves(first)
    crm.faults.outage = True
    with crm_client(crm) as client, pytest.raises(ServerFailure):
        push_feed(settings, settings.feeds[0], client=client, offer_ids=[first.id])
    crm.faults.outage = False
    stock_moves(second)
    assert push(settings, crm, offer_ids=[second.id]).offers == 2
    assert_crm_says_what_the_feeds_say(settings, crm)
    crm.reset_stats()
    assert push(settings, crm, offer_ids=[second.id]).requests == 0  # settled: nothing owed any more


def test_a_slow_retailcrm_times_out_and_the_next_push_catches_up(tmp_path, emulator, crm):
    settings = pushing_settings(tmp_path, emulator, crm)
    build_and_load(settings, crm)
    crm.faults.latency_ms = 400
    error, run = failed_push(settings, crm, TransportFailure, read_timeout=0.2, max_retries=1)
    assert "timed out" in str(error) and run["retries"] == 1
    assert run["counts"]["advice"]["title"] == "Нет связи с retailCRM"
    crm.faults.latency_ms = 0
    push(settings, crm)
    assert_crm_says_what_the_feeds_say(settings, crm)


def test_a_key_spent_by_another_program_is_waited_for_and_the_push_completes(tmp_path, emulator, crm):
    settings = pushing_settings(tmp_path, emulator, crm)
    build_and_load(settings, crm)
    with requests.Session() as other:
        for _ in range(10):
            other.get(crm.api_url + "/reference/sites", headers={"X-API-Key": KEY}, timeout=5)
    result = push(settings, crm)
    assert result.throttled >= 1 and result.retries >= 1
    assert_crm_says_what_the_feeds_say(settings, crm)


def test_a_revoked_key_fails_at_once_with_advice_and_the_next_push_catches_up(tmp_path, emulator, crm):
    settings = pushing_settings(tmp_path, emulator, crm)
    build_and_load(settings, crm)
    crm.faults.revoked = True
    error, run = failed_push(settings, crm, KeyRejected)
    assert run["requests"] == 1 and run["retries"] == 0
    assert run["counts"]["advice"] == {"title": error.title, "action": error.action}
    assert KEY not in run["error"]
    crm.faults.revoked = False
    push(settings, crm)
    assert_crm_says_what_the_feeds_say(settings, crm)


def test_a_deleted_warehouse_code_fails_naming_it_and_sends_nothing_wrong(tmp_path, emulator, crm):
    settings = pushing_settings(tmp_path, emulator, crm)
    build_and_load(settings, crm)
    crm.store_codes = ("main",)  # someone deleted the spb warehouse in retailCRM
    error, run = failed_push(settings, crm, UnknownReference)
    assert "spb" in str(error) and run["counts"]["advice"]["title"] == "retailCRM не знает склад, тип цены или магазин"
    assert crm.state()[SITE] and all(not offer["stock"] for offer in crm.state()[SITE].values())
    crm.store_codes = ("main", "spb")  # restored (or the config fixed)
    push(settings, crm)
    assert_crm_says_what_the_feeds_say(settings, crm)


def test_a_warehouse_name_the_catalog_lacks_is_a_mapping_error_naming_the_known_ones(tmp_path, emulator, crm):
    settings = pushing_settings(tmp_path, emulator, crm, stores=(StoreTarget("spb", ("Склад Питер",)),))
    build_and_load(settings, crm)
    error, run = failed_push(settings, crm, MappingError)
    assert "«Склад Питер»" in str(error) and emulator.catalog.stores[0].name in str(error)
    assert run["requests"] == 0 and run["counts"]["advice"]["title"] == MappingError.title


def test_a_failing_push_after_a_build_leaves_the_build_published(tmp_path, emulator, crm):
    settings = pushing_settings(tmp_path, emulator, crm)
    crm.faults.revoked = True
    run_build(settings, settings.feeds[0])
    with open_catalog(settings.store_path) as store:
        assert store.last_run("feed:main", "build")["status"] == "ok"
        push_run = store.last_run(push_source(settings.feeds[0]), "push")
    assert push_run["status"] == "failed" and "rejected the API key" in push_run["error"]
    assert feed_file(settings, "main").exists()


def test_a_build_pushes_to_retailcrm_before_it_downloads_many_new_pictures(tmp_path, emulator_factory, crm):
    """A first build (every picture new) pushed stock and prices only after minutes of picture downloads and the
    second publication: retailCRM waited for pictures it does not get through the API."""
    settings = pushing_settings(tmp_path, emulator_factory(products=250), crm)
    main = dataclasses.replace(settings.feeds[0], pictures="cache")
    settings = dataclasses.replace(settings, feeds=(main, *settings.feeds[1:]))
    run_build(settings, main)
    with open_catalog(settings.store_path) as store:
        first, with_pictures = reversed(store.runs_of("feed:main", "build", 2))
        push_run = store.last_run(push_source(main), "push")
    assert with_pictures["mode"] == "pictures" and first["counts"]["pictures_waiting"] > 50
    assert push_run["status"] == "ok" and first["id"] < push_run["id"] < with_pictures["id"]


def test_an_exchange_feed_pushes_the_warehouses_and_price_types_of_the_commerceml_files(tmp_path, crm, shared_fixtures):
    from exchange.catalog_import import import_file

    folder = shared_fixtures / "commerceml" / "1c-ut11-2.07"
    upload, images = tmp_path / "upload", tmp_path / "data" / "images"
    upload.mkdir()
    settings = Settings(data_dir=tmp_path / "data", public_url="https://feeds.example", feeds=(
        FeedSettings(name="main", source="exchange", pictures="none", min_ratio=0, retailcrm=RetailCrmSettings(
            url=crm.base_url, api_key=KEY, site=SITE, stores=(StoreTarget("main"), StoreTarget("spb", ("Москва",))),
            prices=(PriceTarget("wholesale", "BASE"),))),
        FeedSettings(name="spb", source="exchange", pictures="none", min_ratio=0, stores=("Москва",), price_type="BASE"),
        FeedSettings(name="rest", source="exchange", pictures="none", min_ratio=0, stores=("Владивосток", "Новосибирск"))))
    with open_catalog(settings.store_path) as store:
        for name in ("import0_1.xml", "offers0_1.xml"):
            import_file(store, folder / name, upload_dir=upload, images_dir=images)
    for feed in settings.feeds:
        build_feed(settings, feed, sync=False)
    crm.load_icml(feed_file(settings, "main"), SITE)
    result = push(settings, crm)
    assert result.offers == len(offers(settings, "main")) and result.not_found == 0
    checked = assert_crm_says_what_the_feeds_say(settings, crm, services=False)
    assert checked["stock"] > 10
    assert any(crm.stock(SITE, offer_id)["spb"]["available"] != crm.stock(SITE, offer_id)["main"]["available"]
               for offer_id in offers(settings, "main"))  # one warehouse of three is not all of them
