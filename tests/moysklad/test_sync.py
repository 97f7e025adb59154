"""MoySklad → catalog store against the emulator over loopback: paging, auth, pacing, faults, increments."""

import collections
import json
import math

import pytest
import requests

from emulator.harness import EMULATOR_TOKEN, client_settings
from moysklad.client import MoySkladClient
from moysklad.errors import CredentialsRejected, MoySkladError, ServerFailure
from moysklad.sync import sync_catalog
from store import CatalogStore


def run_sync(server, store, settings=None, **kwargs):
    client = MoySkladClient(settings or client_settings(server))
    try:
        return sync_catalog(client, store, **kwargs)
    finally:
        client.close()


def dump(store):
    """Every catalog table of the store, to compare states."""
    tables = ("categories", "products", "offers", "prices", "stock", "images", "attributes",
              "warehouses", "units", "price_types", "source_settings")
    return {t: sorted(map(tuple, store.db.execute(f"SELECT * FROM {t}").fetchall()), key=repr) for t in tables}


def live_offers(store):
    return {r["id"]: r for r in store.db.query("SELECT * FROM offers WHERE removed = 0")}


def test_a_full_sync_stores_the_whole_catalog(emulator, store):
    catalog = emulator.catalog
    result = run_sync(emulator, store)

    assert result.mode == "full"
    kinds = collections.Counter(item.kind for item in catalog.items.values())
    offers = live_offers(store)
    assert collections.Counter(o["kind"] for o in offers.values()) == kinds
    assert store.counts("moysklad")["categories"] == len(catalog.folders)
    assert store.counts("moysklad")["warehouses"] == len(catalog.stores)
    assert [r["name"] for r in store.db.query("SELECT name FROM price_types ORDER BY position")] == [
        p.name for p in catalog.price_types]

    prices = collections.defaultdict(dict)
    for row in store.db.query("SELECT * FROM prices"):
        prices[row["offer_id"]][row["price_type_id"]] = row["value"]
    stock = collections.defaultdict(dict)
    for row in store.db.query("SELECT * FROM stock"):
        stock[row["offer_id"]][row["warehouse_id"]] = (row["stock"], row["reserve"], row["in_transit"])

    for item in catalog.items.values():
        offer = offers[item.id]
        assert offer["name"] == item.name
        assert offer["archived"] == int(item.archived)
        assert offer["external_code"] == item.external_code
        listed = item.sale_prices or (0.0,) * len(catalog.price_types)  # a variant without prices: each type at 0
        expected_prices = {pt.id: round(v) for pt, v in zip(catalog.price_types, listed)}
        assert prices.get(item.id, {}) == expected_prices
        if item.kind == "variant":
            assert offer["product_id"] == item.parent_id
            assert [c["value"] for c in json.loads(offer["characteristics"])] == [v for _, v in item.characteristics]
        if item.operated and not item.archived:  # the stock report leaves archived goods out
            in_stock = sum(item.stock[0::3]) > 0  # with none in stock MoySklad reports a cost of 0, which is no cost
            assert offer["cost"] == (round(item.cost) if in_stock else None), item.name
        elif item.stocked and not item.operated:  # never took part in an operation: in no stock report
            assert offer["cost"] is None and item.id not in stock, item.name
        if item.stocked and not item.archived:
            expected_stock = {}
            for index, warehouse in enumerate(catalog.stores):
                values = tuple(float(v) for v in item.stock[index * 3:index * 3 + 3])
                if any(values):
                    expected_stock[warehouse.id] = values
            if item.unbound_reserve:  # reserved without a warehouse: MoySklad's row with storeId null
                expected_stock[""] = (0.0, item.unbound_reserve, 0.0)
            assert stock.get(item.id, {}) == expected_stock, item.name

    assert any(i.operated and sum(i.stock[0::3]) > 0 and sum(i.stock[0::3]) == sum(i.stock[1::3])
               for i in catalog.items.values() if i.stocked and not i.archived)  # all reserved: nothing available
    cards = {r["id"]: r["tracking_type"] for r in store.db.query("SELECT id, tracking_type FROM products")}
    assert cards == {i.id: i.tracking_type for i in catalog.items.values() if i.kind in ("product", "bundle")} | {
        i.id: None for i in catalog.items.values() if i.kind == "service"}
    assert set(cards.values()) > {"NOT_TRACKED", None}
    components = collections.defaultdict(list)
    for row in store.db.query("SELECT * FROM bundle_components ORDER BY bundle_id"):
        components[row["bundle_id"]].append((row["component_id"], row["quantity"]))
    bundles = [i for i in catalog.items.values() if i.kind == "bundle"]
    assert bundles and {b.id: sorted(b.components) for b in bundles} == {k: sorted(v) for k, v in components.items()}
    bundle_reads = [e for e in emulator.request_log if e["path"] == "/entity/bundle"]
    assert bundle_reads and all(e["query"]["expand"] == "components" and int(e["query"]["limit"]) <= 100
                                for e in bundle_reads)

    n = len(catalog.items)
    folder_pages = math.ceil(len(catalog.folders) / 1000)
    assert result.requests <= 2 * math.ceil(n / 1000) + folder_pages + math.ceil(len(bundles) / 100) + 7
    assert emulator.stats["status"] == {200: result.requests}
    assert result.throttled == 0 and result.retries == 0
    last = store.last_run("moysklad", "sync")
    assert last["status"] == "ok" and last["requests"] == result.requests and last["bookmark"] == result.bookmark


def test_pages_of_1000_are_fetched_in_parallel_and_in_order(emulator_factory, store):
    server = emulator_factory(products=2600, seed=3)
    result = run_sync(server, store)
    offsets = sorted(int(e["query"].get("offset", 0)) for e in server.request_log if e["path"] == "/entity/assortment")
    assert offsets == [0, 1000, 2000]
    assert all(e["query"].get("limit") == "1000" for e in server.request_log if e["path"] == "/entity/assortment")
    expanded = [e for e in server.request_log if "expand" in e["query"]]
    assert expanded and all(e["path"] == "/entity/bundle" and int(e["query"]["limit"]) <= 100 for e in expanded)
    assert len(live_offers(store)) == 2600
    assert result.counts["assortment_rows"] == 2600
    assert 1 < server.stats["max_in_flight"] <= 4
    assert result.requests <= 2 * 3 + 10


def test_hostile_data_is_stored_exactly_as_moysklad_has_it(emulator, store):
    run_sync(emulator, store)
    stored = {o["id"]: o["name"] for o in live_offers(store).values()}
    hostile = {i.id: i.name for i in emulator.catalog.items.values()
               if any(ch in i.name for ch in "&<>\"'\x01\x0b🎁") or len(i.name) > 200 or i.name == ""}
    kinds = "".join(hostile.values())
    assert all(ch in kinds for ch in "&<>\"\x01\x0b🎁") and "" in hostile.values()
    assert {k: stored[k] for k in hostile} == hostile


def test_malformed_items_are_skipped_with_a_reason_and_the_run_goes_on(emulator, store):
    products = [i for i in emulator.catalog.items.values() if i.kind == "product"]
    nameless, badly_priced = products[0], products[1]
    emulator.catalog.corrupt_item(nameless.id, name=None)
    emulator.catalog.corrupt_item(badly_priced.id, salePrices=[{"value": "12,50", "priceType": {
        "meta": {"href": emulator.base_url + "/context/companysettings/pricetype/x", "type": "pricetype"},
        "id": emulator.catalog.price_types[0].id, "name": "Цена продажи"}}])
    result = run_sync(emulator, store)
    skipped = {s["item_id"]: s["reason"] for s in store.skipped_items(result.run_id)}
    assert skipped[nameless.id] == "product has no name"
    assert "price «Цена продажи» is not a number: '12,50'" == skipped[badly_priced.id]
    assert result.counts["skipped"] == 2
    assert len(live_offers(store)) == len(emulator.catalog.items) - 2


def test_wrong_token_fails_at_once_with_the_servers_words(emulator, store):
    with pytest.raises(CredentialsRejected) as error:
        run_sync(emulator, store, settings=client_settings(emulator, token="stale"))
    assert "MoySklad rejected the credentials: Ошибка аутентификации" in str(error.value)
    assert emulator.stats["requests"] == 1  # a 401 is never retried
    last = store.last_run("moysklad", "sync")
    assert last["status"] == "failed" and "rejected the credentials" in last["error"]
    assert live_offers(store) == {}


def test_login_and_password_work_too(emulator, store):
    settings = client_settings(emulator, token="", login="admin@emu", password="emu-pass")
    run_sync(emulator, store, settings=settings)
    assert len(live_offers(store)) == len(emulator.catalog.items)
    assert {e["auth"] for e in emulator.request_log} == {"basic"}


def test_pacing_stays_inside_the_unit_budget(emulator, store):
    # 20-row pages: 15 assortment pages and about ten stock-report pages at 5 units each: more than
    # MoySklad's 45 units a 3-second window, so the client has to pace itself
    settings = client_settings(emulator, page_size=20)
    result = run_sync(emulator, store, settings=settings)
    log = emulator.request_log
    spent = sum(e["cost"] for e in log)
    assert spent > 45
    assert emulator.stats["throttled"] == 0 and result.throttled == 0
    # the client counts units as MoySklad charges them: 5 for a /report/stock/all page, and for any other request
    # what a user's request weighs, 4 from 2026-12-01
    assert result.units == spent
    assert {e["cost"] for e in log if e["path"] == "/report/stock/all"} == {5}
    assert {e["cost"] for e in log if e["path"].endswith("/current")} == {4}


def test_a_noisy_neighbour_gets_us_429s_and_we_wait_as_told(emulator, store):
    # another tool on the same account spends the whole budget just before we start
    headers = {"Authorization": f"Bearer {EMULATOR_TOKEN}", "Accept-Encoding": "gzip"}
    with requests.Session() as session:
        for _ in range(60):
            if session.get(emulator.base_url + "/entity/currency", headers=headers, timeout=5).status_code == 429:
                break
    result = run_sync(emulator, store)

    ours = [e for e in emulator.request_log if e["path"] != "/entity/currency"]
    throttled = [i for i, e in enumerate(ours) if e["status"] == 429]
    assert result.throttled == len(throttled) >= 1
    for index in throttled:  # the next request waited for the window to free, as X-Lognex-Retry-After said
        assert ours[index + 1]["t"] - ours[index]["t"] >= 1.0
    assert len(live_offers(store)) == len(emulator.catalog.items)


def test_server_errors_resets_and_truncated_bodies_are_retried(emulator_factory, tmp_path):
    clean_server = emulator_factory(products=400, seed=5)
    clean = CatalogStore(tmp_path / "clean.sqlite")
    run_sync(clean_server, clean)

    faulty_server = emulator_factory(products=400, seed=5)
    faulty_server.faults.update({"error_rate": 0.2, "reset_rate": 0.1, "truncate_rate": 0.1, "seed": 11})
    faulty = CatalogStore(tmp_path / "faulty.sqlite")
    result = run_sync(faulty_server, faulty, settings=client_settings(faulty_server, page_size=100, max_retries=8))

    assert result.retries >= 3
    statuses = collections.Counter(e["status"] for e in faulty_server.request_log)
    assert any(code >= 500 for code in statuses)
    assert dump(faulty)["offers"] == dump(clean)["offers"]
    assert dump(faulty)["stock"] == dump(clean)["stock"]
    assert dump(faulty)["prices"] == dump(clean)["prices"]


def test_an_outage_mid_run_leaves_the_store_as_it_was(emulator, store):
    run_sync(emulator, store)
    before = dump(store)
    some = next(iter(emulator.catalog.items.values()))
    emulator.catalog.update_item(some.id, name="Переименован во время сбоя")
    emulator.faults.fail_after = {"path": "/report/stock/all", "after": 0, "status": 503}
    with pytest.raises(ServerFailure, match="gave up after"):
        run_sync(emulator, store, full=True)
    assert dump(store) == before
    runs = store.recent_runs()
    assert [r["status"] for r in runs] == ["failed", "ok"]
    assert "503" in runs[0]["error"] and runs[0]["retries"] == 5


def test_credentials_revoked_mid_run_fail_the_run_without_damage(emulator, store):
    run_sync(emulator, store)
    before = dump(store)

    def revoke(stage, count, total=None):
        if stage == "assortment":
            emulator.set_credentials(token="someone-issued-a-new-token")

    with pytest.raises(CredentialsRejected):
        run_sync(emulator, store, full=True, progress=revoke)
    assert dump(store) == before


def test_a_store_from_before_tracking_types_reads_the_catalog_whole_at_its_next_sync(emulator, tmp_path):
    """products.tracking_type came after the table: a store an earlier version wrote has none, and an incremental
    sync reads only what changed, so after an upgrade the feed left out every good under mandatory marking until
    the next full sync (never with full_sync_hours 0). Its next sync reads the catalog whole, once."""
    path = tmp_path / "catalog.sqlite"
    with CatalogStore(path) as store:
        run_sync(emulator, store)
        store.db.execute("ALTER TABLE products DROP COLUMN tracking_type")  # as the earlier version made the file
        store.db.conn.commit()
    with CatalogStore(path) as store:
        assert run_sync(emulator, store, full_sync_hours=0).mode == "full"
        cards = {r["id"]: r["tracking_type"] for r in store.db.query("SELECT id, tracking_type FROM products")}
        assert run_sync(emulator, store, full_sync_hours=0).mode == "incremental"
    assert cards == {i.id: i.tracking_type for i in emulator.catalog.items.values() if i.kind in ("product", "bundle")} | {
        i.id: None for i in emulator.catalog.items.values() if i.kind == "service"}


def test_incremental_runs_read_only_what_changed_and_full_runs_notice_deletions(emulator, store):
    catalog = emulator.catalog
    first = run_sync(emulator, store)
    products = [i for i in catalog.items.values() if i.kind == "product" and not i.variant_ids]
    repriced, deleted = products[0], products[1]
    catalog.update_item(repriced.id, sale_price=123456.0)
    catalog.delete_item(deleted.id)
    new_id = catalog.add_product(name="Новинка", price_kopecks=99900.0, variants=2)
    emulator.reset_stats()

    second = run_sync(emulator, store)
    assert second.mode == "incremental"
    assert second.counts["assortment_rows"] == 4  # the repriced product, the new one and its 2 variants
    updated_filter = [e["query"]["filter"] for e in emulator.request_log if e["path"] == "/entity/assortment"]
    assert updated_filter == [f"archived=true;archived=false;updated>={first.bookmark}"]
    offers = live_offers(store)
    assert new_id in offers and offers[new_id]["name"] == "Новинка"
    price = store.db.execute("SELECT value FROM prices WHERE offer_id = ? AND price_type_id = ?",
                             [repriced.id, catalog.price_types[0].id]).fetchone()[0]
    assert price == 123456
    assert deleted.id in offers  # an incremental run cannot see deletions

    third = run_sync(emulator, store, full=True)
    assert third.mode == "full" and third.counts["removed_offers"] == 1
    row = store.db.execute("SELECT removed, removed_at FROM offers WHERE id = ?", [deleted.id]).fetchone()
    assert row[0] == 1 and row[1]


def test_a_full_sync_comes_round_when_it_is_due(emulator, store):
    run_sync(emulator, store)
    assert run_sync(emulator, store, full_sync_hours=24).mode == "incremental"
    assert run_sync(emulator, store, full_sync_hours=0).mode == "incremental"
    store.db.execute("UPDATE source_settings SET value = '2020-01-01T00:00:00+03:00' WHERE key = 'last_full_sync'")
    store.db.conn.commit()
    assert run_sync(emulator, store, full_sync_hours=24).mode == "full"


def test_an_api_error_names_the_servers_messages(emulator):
    client = MoySkladClient(client_settings(emulator))
    with pytest.raises(MoySkladError) as error:
        client.get("/entity/assortment", {"filter": "colour=red"})
    assert "HTTP 412" in str(error.value) and "Неизвестное поле фильтрации 'colour'" in str(error.value)
    assert emulator.stats["requests"] == 1
    client.close()
