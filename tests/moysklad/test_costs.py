"""Unit cost and first image between whole stock reports, against the emulator over loopback: an
incremental sync reads them only for the goods that changed, by their links, and leaves the store as a
full sync would."""

import math
from urllib.parse import urlencode

import pytest

from emulator.harness import client_settings
from moysklad.client import MoySkladClient
from moysklad.stock import apply_stock_changes
from moysklad.sync import (
    LAST_STOCK_REPORT,
    MAX_URL_BYTES,
    STOCK_REPORT,
    STOCK_REPORT_FILTER,
    cost_filters,
    sync_catalog,
)
from store import CatalogStore

# Stock-report pages of 50 rows make the whole report several pages even for the emulator's small
# catalog, as it is for a real one; the reads by link must then cost less than it.
PAGE = 50


def run_sync(server, store, **kwargs):
    with MoySkladClient(client_settings(server, page_size=PAGE)) as client:
        return sync_catalog(client, store, **kwargs)


def report_reads(server) -> list[set[str]]:
    """The goods each /report/stock/all request since the last stats reset asked for (empty: the whole report)."""
    reads = []
    for entry in server.request_log:
        if entry["path"] == STOCK_REPORT:
            conditions = entry["query"]["filter"].split(";")
            reads.append({c.rsplit("/", 1)[1] for c in conditions if c.startswith(("product=", "variant="))})
    return reads


def costs(store) -> dict[str, int | None]:
    return dict(store.db.execute("SELECT id, cost FROM offers").fetchall())


def catalog_state(store) -> dict:
    """What a feed reads of the store, without what says which run wrote it."""
    queries = {
        "offers": "SELECT id, product_id, kind, name, code, article, external_code, barcodes, characteristics, buy_price, "
                  "cost, image_count, archived, removed, updated FROM offers",
        "products": "SELECT id, kind, name, category_id, unit_id, vat, vat_enabled, weight, variants_count, tracking_type, "
                    "archived, removed, updated FROM products",
        "prices": "SELECT offer_id, price_type_id, value FROM prices",
        "attributes": "SELECT owner_id, attribute_id, name, type, value FROM attributes",
        "images": "SELECT owner_id, position, filename, title, size, updated, href FROM images",
        # a changedSince report keeps a warehouse whose figures went to 0; a whole read has no such line
        "stock": "SELECT offer_id, warehouse_id, stock, reserve, in_transit FROM stock WHERE stock OR reserve OR in_transit",
        "categories": "SELECT id, parent_id, name, archived FROM categories",
        "bundle_components": "SELECT bundle_id, component_id, quantity FROM bundle_components",
    }
    return {table: sorted(map(tuple, store.db.execute(sql).fetchall()), key=repr) for table, sql in queries.items()}


def goods(catalog, count, *, exclude=()):
    """Goods the stock report lists (operated, not archived), products without variants and variants."""
    found = [i for i in catalog.items.values() if i.operated and not i.archived and not i.variant_ids
             and i.kind in ("product", "variant") and i.id not in exclude]
    return found[:count]


def test_an_incremental_sync_reads_cost_and_image_only_for_what_changed(emulator, store):
    catalog = emulator.catalog
    run_sync(emulator, store)
    repriced, renamed, supplied = goods(catalog, 3)
    catalog.update_item(repriced.id, sale_price=777700.0)
    catalog.update_item(renamed.id, name="Новое имя", image_count=0)
    catalog.receive(supplied.id, catalog.stores[0].id, 10, unit_cost=round(supplied.cost * 3))
    new_id = catalog.add_product(name="Новинка", price_kopecks=50000.0, stock=4)
    emulator.reset_stats()

    result = run_sync(emulator, store)
    assert result.mode == "incremental"
    assert report_reads(emulator) == [{repriced.id, renamed.id, supplied.id, new_id}]  # one request, by their links
    current = [e for e in emulator.request_log if e["path"].endswith("/current")]
    assert len(current) == 3 and all(e["query"]["changedSince"] for e in current)
    assert result.requests <= 11 and result.counts["cost_read"] == "changes"
    stored = costs(store)
    assert stored[supplied.id] == round(supplied.cost) != 0  # the supply changed its cost: read at once
    assert stored[new_id] == round(catalog.items[new_id].cost)  # a new good's cost is read at once
    images = {row[0] for row in store.db.execute("SELECT owner_id FROM images")}
    assert renamed.id not in images and new_id not in images  # its picture went; the new good has none
    assert repriced.id in images or repriced.image_count == 0


def test_the_store_after_incremental_syncs_equals_a_full_syncs(emulator, tmp_path):
    catalog = emulator.catalog
    incremental = CatalogStore(tmp_path / "incremental.sqlite")
    run_sync(emulator, incremental)
    repriced, renamed, supplied, archived, sold = goods(catalog, 5)
    catalog.update_item(repriced.id, sale_price=123400.0, image_count=2)
    catalog.update_item(renamed.id, name="Переименован")
    catalog.receive(supplied.id, catalog.stores[1].id, 7, unit_cost=supplied.cost * 2)
    catalog.update_item(archived.id, archived=True)
    catalog.set_stock(sold.id, catalog.stores[0].id, stock=0, reserve=0, in_transit=0)
    catalog.add_product(name="Новинка с модификациями", price_kopecks=99900.0, variants=2, stock=3)
    first = run_sync(emulator, incremental)
    catalog.receive(renamed.id, catalog.stores[0].id, 2, unit_cost=1)
    second = run_sync(emulator, incremental)

    # a full sync of the same store (one started afresh would lack the cost the archived good had)
    incremental.db.execute("VACUUM INTO ?", [str(tmp_path / "whole.sqlite")])
    whole = CatalogStore(tmp_path / "whole.sqlite")
    assert run_sync(emulator, whole, full=True).counts["cost_read"] == "whole"
    assert first.mode == second.mode == "incremental"
    assert first.counts["cost_read"] == second.counts["cost_read"] == "changes"
    assert catalog_state(incremental) == catalog_state(whole)


def test_a_stock_webhook_in_between_does_not_make_the_sync_miss_a_new_cost(emulator, store):
    catalog = emulator.catalog
    run_sync(emulator, store)
    supplied, = goods(catalog, 1)
    catalog.receive(supplied.id, catalog.stores[0].id, 50, unit_cost=supplied.cost * 4)
    with MoySkladClient(client_settings(emulator)) as client:
        update = apply_stock_changes(client, store, None)  # the fast path: stock only, its bookmark moves on
    assert update.offer_ids == [supplied.id] and costs(store)[supplied.id] != round(supplied.cost)
    emulator.reset_stats()

    run_sync(emulator, store)
    assert report_reads(emulator) == [{supplied.id}]
    assert costs(store)[supplied.id] == round(supplied.cost)


def test_a_cost_that_changes_with_nothing_else_waits_for_the_whole_report(emulator, store):
    catalog = emulator.catalog
    run_sync(emulator, store)
    edited, = goods(catalog, 1)
    with catalog.lock:  # a supply document edited afterwards: the cost changes, not the stock nor the card
        edited.cost, catalog.version = edited.cost + 10000, catalog.version + 1
    emulator.reset_stats()

    quiet = run_sync(emulator, store)
    assert report_reads(emulator) == [] and quiet.counts.get("costs_read", 0) == 0
    assert costs(store)[edited.id] != round(edited.cost)

    store.db.execute("UPDATE source_settings SET value = '2020-01-01T00:00:00+03:00' WHERE key = ?", [LAST_STOCK_REPORT])
    store.db.conn.commit()
    due = run_sync(emulator, store, stock_report_hours=24)
    assert due.mode == "incremental" and due.counts["cost_read"] == "whole"
    stocked = sum(1 for i in catalog.items.values() if i.operated and not i.archived)
    assert len(report_reads(emulator)) == math.ceil(stocked / PAGE) and not any(report_reads(emulator))
    assert costs(store)[edited.id] == round(edited.cost)
    assert run_sync(emulator, store, stock_report_hours=24).counts["cost_read"] == "changes"  # and not again


def test_the_whole_report_is_read_when_it_costs_no_more_than_the_links(emulator, store):
    catalog = emulator.catalog
    with MoySkladClient(client_settings(emulator)) as client:  # pages of 1000: the whole report is one request
        sync_catalog(client, store)
        changed, = goods(catalog, 1)
        catalog.update_item(changed.id, sale_price=100.0)
        emulator.reset_stats()
        result = sync_catalog(client, store)
    assert result.counts["cost_read"] == "whole" and report_reads(emulator) == [set()]


@pytest.mark.parametrize("base_url", ["https://api.moysklad.ru/api/remap/1.2", "http://127.0.0.1:8081/api/remap/1.2"])
def test_links_are_batched_under_the_header_limit_and_each_good_asked_once(base_url):
    goods_ = {f"{n:08d}-0000-4000-8000-{n:012d}": "variant" if n % 3 else "product" for n in range(500)}
    batches = cost_filters(base_url, goods_)
    asked = [c.rsplit("/", 1)[1] for batch in batches for c in batch.split(";") if c.startswith(("product=", "variant="))]
    assert sorted(asked) == sorted(goods_)
    for batch in batches:
        assert batch.startswith(STOCK_REPORT_FILTER + ";")
        url = f"{base_url}{STOCK_REPORT}?" + urlencode({"filter": batch, "limit": 1000, "offset": 1000})
        assert len(url) <= MAX_URL_BYTES
    assert len(batches) <= math.ceil(len(goods_) / 45)  # about 48 links a request at api.moysklad.ru
    assert cost_filters(base_url, {}) == []


def test_several_links_of_one_key_add_up_and_a_url_over_8_kb_is_refused(emulator):
    wanted = goods(emulator.catalog, 100)
    with MoySkladClient(client_settings(emulator)) as client:
        for batch in cost_filters(client.base_url, {item.id: item.kind for item in wanted}):
            assert len(client.get(STOCK_REPORT, {"filter": batch})["rows"]) == batch.count("/entity/")
        too_long = STOCK_REPORT_FILTER + "".join(f";product={client.base_url}/entity/product/{item.id}" for item in wanted)
        with pytest.raises(Exception, match="HTTP 414"):
            client.get(STOCK_REPORT, {"filter": too_long})
