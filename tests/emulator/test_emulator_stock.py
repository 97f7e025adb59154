"""Stock reports of the emulator over loopback, each rule as md/reports/_report_stock.md states it."""

import collections
import time
from datetime import timedelta

import pytest
import requests

from emulator.catalog import format_moment, moscow_now
from emulator.stock import STOCK_MODES
from tests.emulator.test_emulator import AUTH, error_code, fresh, get, serving  # noqa: F401 - fresh is a fixture


@pytest.fixture(scope="module")
def server():
    yield from serving(400, 2)


def report(srv, path="/report/stock/all", **params):
    response = get(srv, path, **params)
    assert response.status_code == 200, response.text[:300]
    return response.json()


def row_ids(body) -> list[str]:
    return [row["meta"]["href"].split("?")[0].rsplit("/", 1)[-1] for row in body["rows"]]


def totals(item, stores=None):
    """(stock, reserve, inTransit) of a good summed over `stores` (indexes; all by default)."""
    indexes = range(len(item.stock) // 3) if stores is None else stores
    return tuple(sum(item.stock[3 * i + k] for i in indexes) for k in range(3))


def available(item, stores=None) -> float:
    stock, reserve, in_transit = totals(item, stores)
    return stock - reserve + in_transit


def listed(catalog):
    """Goods a stock report can show: took part in an operation, not archived."""
    return [i for i in catalog.items.values() if i.operated and not i.archived]


def href(srv, kind, entity_id):
    return f"{srv.base_url}/entity/{kind}/{entity_id}"


def test_all_report_defaults_leave_out_goods_with_nothing_available(server):
    """stockMode defaults to all and quantityMode to nonEmpty, so stockMode=all alone drops available-0 goods."""
    catalog = server.catalog
    expected = {i.id for i in listed(catalog) if available(i) != 0}
    assert set(row_ids(report(server))) == expected
    assert set(row_ids(report(server, filter="stockMode=all"))) == expected
    everything = set(row_ids(report(server, filter="stockMode=all;quantityMode=all")))
    assert everything == {i.id for i in listed(catalog)}
    reserved = [i for i in listed(catalog) if totals(i)[0] > 0 and available(i) == 0]
    assert reserved and all(i.id in everything and i.id not in expected for i in reserved)


# doc "Доступные значения для stockMode" (quantityMode takes the same); no good of the emulator has a minimum
# balance, so underMinimum is below 0. Written out here, not taken from emulator.stock, the code under test.
MODES = {"all": lambda value: True, "positiveOnly": lambda value: value > 0, "negativeOnly": lambda value: value < 0,
         "empty": lambda value: value == 0, "nonEmpty": lambda value: value != 0, "underMinimum": lambda value: value < 0}


def test_the_documented_stock_modes_are_all_known():
    assert set(STOCK_MODES) == set(MODES)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_stock_and_quantity_modes_filter_on_stock_and_available(fresh, mode):
    catalog = fresh.catalog
    sold_short, over_reserved = listed(catalog)[:2]
    for good in (sold_short, over_reserved):
        for store in catalog.stores:
            catalog.set_stock(good.id, store.id, stock=0, reserve=0, in_transit=0)
    catalog.set_stock(sold_short.id, catalog.stores[0].id, stock=-3)  # stock and available below 0
    catalog.set_stock(over_reserved.id, catalog.stores[0].id, stock=2, reserve=5)  # stock 2, available -3
    accepts = MODES[mode]
    by_stock = report(fresh, filter=f"stockMode={mode};quantityMode=all")
    expected = {i.id for i in listed(catalog) if accepts(totals(i)[0])}
    assert set(row_ids(by_stock)) == expected and expected  # the catalog has goods each mode takes
    by_quantity = report(fresh, filter=f"quantityMode={mode};stockMode=all")
    expected = {i.id for i in listed(catalog) if accepts(available(i))}
    assert set(row_ids(by_quantity)) == expected and expected
    assert all(accepts(row["quantity"]) for row in by_quantity["rows"])
    assert (sold_short.id in row_ids(by_stock), over_reserved.id in row_ids(by_quantity)) == (accepts(-3), accepts(-3))


def test_bystore_report_has_stockmode_nonempty_and_no_quantitymode(server):
    """Остатки по складам: stockMode defaults to nonEmpty and quantityMode is not among its filters."""
    catalog = server.catalog
    body = report(server, "/report/stock/bystore")
    assert set(row_ids(body)) == {i.id for i in listed(catalog) if totals(i)[0] != 0}
    assert all(len(row["stockByStore"]) == len(catalog.stores) for row in body["rows"])
    refused = get(server, "/report/stock/bystore", filter="quantityMode=all")
    assert refused.status_code == 412 and error_code(refused) == 1034
    store = catalog.stores[1]
    on_store = report(server, "/report/stock/bystore", filter=f"store={href(server, 'store', store.id)}")
    assert set(row_ids(on_store)) == {i.id for i in listed(catalog) if totals(i, [1])[0] != 0}
    assert all(len(row["stockByStore"]) == len(catalog.stores) for row in on_store["rows"])


def test_unknown_filter_keys_and_operators_are_refused(server):
    for path in ("/report/stock/all", "/report/stock/bystore"):
        unknown = get(server, path, filter="colour=red")
        assert unknown.status_code == 412 and error_code(unknown) == 1034
        assert unknown.json()["errors"][0]["error"] == "Ошибка фильтрации: Неизвестное поле фильтрации 'colour'"
    assert error_code(get(server, "/report/stock/all", filter="stockMode!=all")) == 1034
    assert error_code(get(server, "/report/stock/all", filter="stockMode=sometimes")) == 1041
    product = next(i for i in listed(server.catalog) if i.kind == "product")
    wrong_type = get(server, "/report/stock/all", filter=f"product={href(server, 'variant', product.id)}")
    assert wrong_type.status_code == 400 and error_code(wrong_type) == 1014
    assert error_code(get(server, "/report/stock/all", filter="archived=maybe")) == 1014


def test_product_variant_and_store_filters(server):
    """Several values of one key, and product with variant, add up (OR); "!=" excludes; store sums its stores."""
    catalog = server.catalog
    goods = listed(catalog)
    products = [i for i in goods if i.kind == "product"][:2]
    variant = next(i for i in goods if i.kind == "variant")
    wide = "stockMode=all;quantityMode=all"
    two = ";".join(f"product={href(server, 'product', p.id)}" for p in products)
    assert sorted(row_ids(report(server, filter=f"{two};{wide}"))) == sorted(p.id for p in products)
    mixed = f"product={href(server, 'product', products[0].id)};variant={href(server, 'variant', variant.id)};{wide}"
    assert sorted(row_ids(report(server, filter=mixed))) == sorted([products[0].id, variant.id])
    excluded = report(server, filter=f"product!={href(server, 'product', products[0].id)};{wide}")
    assert products[0].id not in row_ids(excluded) and excluded["meta"]["size"] == len(goods) - 1
    clash = get(server, "/report/stock/all", filter=f"product={href(server, 'product', products[0].id)};"
                                                    f"variant!={href(server, 'variant', variant.id)}")
    assert clash.status_code == 412 and error_code(clash) == 1034
    store = catalog.stores[2]
    on_store = report(server, filter=f"store={href(server, 'store', store.id)};{wide}")
    for row, item_id in zip(on_store["rows"], row_ids(on_store)):
        stock, reserve, in_transit = totals(catalog.items[item_id], [2])
        assert (row["stock"], row["reserve"], row["inTransit"]) == (stock, reserve, in_transit)
    others = report(server, filter=f"store!={href(server, 'store', store.id)};{wide}")
    first = catalog.items[row_ids(others)[0]]
    assert others["rows"][0]["stock"] == totals(first, [0, 1])[0]


def test_a_request_with_more_than_8_kb_of_headers_is_refused(server):
    """md/_restrictions.md: "не более 8 КБ в заголовках запроса (URL, User-Agent, Authorization и т. д.)"."""
    goods = listed(server.catalog)
    links = [f"product={href(server, 'product', item.id)}" for item in goods if item.kind == "product"]
    fits = ";".join(links[:40]) + ";stockMode=all;quantityMode=all"
    assert len(row_ids(report(server, filter=fits))) == 40  # ~5 KB of URL: answered
    too_long = get(server, "/report/stock/all", filter=";".join(links[:100]))
    assert too_long.status_code == 414 and "414 Request-URI Too Large" in too_long.text
    assert server.stats["status"].get(414) == 1


def test_include_related_adds_the_variants_of_a_filtered_product(server):
    catalog = server.catalog
    product = next(i for i in catalog.items.values()
                   if i.kind == "product" and not i.archived and any(catalog.items[v].operated for v in i.variant_ids))
    wide = f"product={href(server, 'product', product.id)};stockMode=all;quantityMode=all"
    assert row_ids(report(server, filter=wide)) == []  # a product with variants has no stock of its own
    related = report(server, filter=wide, includeRelated="true")
    assert set(row_ids(related)) == {v for v in product.variant_ids if catalog.items[v] in listed(catalog)}


def test_folder_and_search_filters(server):
    catalog = server.catalog
    parent = next(f for f in catalog.folders.values()
                  if any(child.parent_id == f.id for child in catalog.folders.values()))

    def inside(item, sub_folders):
        folder_id = (catalog.parent_of(item) or item).folder_id
        while folder_id:
            if folder_id == parent.id:
                return True
            folder_id = catalog.folders[folder_id].parent_id if sub_folders else None
        return False

    wide = f"productFolder={href(server, 'productfolder', parent.id)};stockMode=all;quantityMode=all"
    assert set(row_ids(report(server, filter=wide))) == {i.id for i in listed(catalog) if inside(i, True)}
    direct = report(server, filter=wide + ";withSubFolders=false")
    assert set(row_ids(direct)) == {i.id for i in listed(catalog) if inside(i, False)}
    word = listed(catalog)[0].name.split()[0]
    found = report(server, filter=f"search={word};stockMode=all;quantityMode=all")
    assert set(row_ids(found)) == {i.id for i in listed(catalog) if word.lower() in i.name.lower()}


def test_never_operated_goods_services_and_bundles_are_in_no_stock_report(server):
    catalog = server.catalog
    never = {i.id for i in catalog.items.values() if i.stock is not None and not i.operated}
    no_stock = {i.id for i in catalog.items.values() if i.kind in ("service", "bundle")}
    assert never and no_stock
    seen = set(row_ids(report(server, filter="stockMode=all;quantityMode=all;archived=true;archived=false")))
    seen |= set(row_ids(report(server, "/report/stock/bystore", filter="stockMode=all")))
    for path in ("/report/stock/all/current", "/report/stock/bystore/current"):
        seen |= {row["assortmentId"] for row in report(server, path, include="zeroLines")}
    assert not seen & (never | no_stock)
    bundle = next(iter(no_stock & {i.id for i in catalog.items.values() if i.kind == "bundle"}))
    assert report(server, "/report/stock/all/current", include="zeroLines", filter=f"assortmentId={bundle}") == []


def test_report_paging_limit_order_and_cost(server):
    assert error_code(get(server, "/report/stock/all", limit=1001)) == 1040
    first = report(server, filter="stockMode=all;quantityMode=all", limit=50)
    assert first["meta"]["limit"] == 50 and first["meta"]["nextHref"].endswith("limit=50&offset=50")
    catalog = server.catalog

    def place(item_id):
        item = catalog.items[item_id]
        folder = catalog.folders.get((catalog.parent_of(item) or item).folder_id or "")
        return (folder.full_path if folder else "", item.name)

    ids = row_ids(report(server, filter="stockMode=all;quantityMode=all"))
    assert [place(i) for i in ids] == sorted(place(i) for i in ids)  # by folder, then name
    costs = {}
    for path in ("/report/stock/all", "/report/stock/bystore", "/report/stock/all/current",
                 "/report/stock/bystore/current"):
        get(server, path, limit=1) if "current" not in path else get(server, path)
        costs[path] = server.request_log[-1]["cost"]
    # a /current form costs what any request of a user does: 4 units from 2026-12-01 (md/_restrictions.md)
    assert costs == {"/report/stock/all": 5, "/report/stock/bystore": 5, "/report/stock/all/current": 4,
                     "/report/stock/bystore/current": 4}


def test_archived_goods_only_on_request(server):
    catalog = server.catalog
    archived = {i.id for i in catalog.items.values() if i.operated and i.archived}
    assert archived
    assert not archived & set(row_ids(report(server, filter="stockMode=all;quantityMode=all")))
    only = report(server, filter="archived=true;stockMode=all;quantityMode=all")
    assert set(row_ids(only)) == archived


def test_current_report_filters_in_every_documented_form(server):
    goods = [i for i in listed(server.catalog)][:2]
    a, b = (i.id for i in goods)
    expected = sorted([a, b])
    forms = [{"filter": f"assortmentId={a},{b}"}, {"filter": f"assortmentId={a};assortmentId={b}"}]
    for params in forms:
        assert sorted(r["assortmentId"] for r in report(server, "/report/stock/all/current", include="zeroLines",
                                                        **params)) == expected
    repeated = requests.get(f"{server.base_url}/report/stock/all/current?include=zeroLines"
                            f"&filter=assortmentId={a}&filter=assortmentId={b}", headers=AUTH).json()
    assert sorted(r["assortmentId"] for r in repeated) == expected
    store = server.catalog.stores[0]
    by_store = report(server, "/report/stock/bystore/current", include="zeroLines",
                      filter=f"assortmentId={a};storeId={store.id}")
    assert by_store == [{"assortmentId": a, "storeId": store.id, "stock": goods[0].stock[0]}]
    assert error_code(get(server, "/report/stock/all/current", filter="store=x")) == 1034
    assert error_code(get(server, "/report/stock/all/current", include="everything")) == 1084


def test_current_report_leaves_out_zero_lines_and_archived_goods(server):
    catalog = server.catalog
    rows = report(server, "/report/stock/all/current", stockType="freeStock")
    # the total takes off the reserve without a warehouse too (see test_a_reserve_without_a_warehouse_…)
    free = {i.id: totals(i)[0] - totals(i)[1] - (i.unbound_reserve or 0) for i in listed(catalog)}
    assert {r["assortmentId"]: r["freeStock"] for r in rows} == {k: v for k, v in free.items() if v != 0}
    zero = report(server, "/report/stock/all/current", stockType="freeStock", include="zeroLines")
    assert {r["assortmentId"] for r in zero} == set(free)


def test_a_reserve_without_a_warehouse_is_the_row_with_store_id_null(server):
    """doc (краткий отчет): «При разделении по складам строка без склада содержит резервы, не привязанные к
    складу»; fixture stock_bystore_current_freeStock.json: that row's freeStock is minus the reserve."""
    catalog = server.catalog
    reserve = report(server, "/report/stock/bystore/current", stockType="reserve")
    free = report(server, "/report/stock/bystore/current", stockType="freeStock")
    unbound = {r["assortmentId"]: r["reserve"] for r in reserve if r["storeId"] is None}
    assert unbound and all(value > 0 for value in unbound.values())
    assert {r["assortmentId"]: r["freeStock"] for r in free if r["storeId"] is None} == {
        good: -value for good, value in unbound.items()}
    assert all(r["storeId"] for r in report(server, "/report/stock/bystore/current"))  # stock is on warehouses
    # not split by warehouse, the good's reserve is the sum of its rows, the one without a warehouse included
    summed = collections.defaultdict(float)
    for row in reserve:
        summed[row["assortmentId"]] += row["reserve"]
    assert {r["assortmentId"]: r["reserve"] for r in report(server, "/report/stock/all/current",
                                                            stockType="reserve")} == summed
    # filter storeId: «Выдать в отчёте только указанные склады»
    store = catalog.stores[0]
    on_store = report(server, "/report/stock/bystore/current", stockType="reserve", filter=f"storeId={store.id}")
    assert {r["storeId"] for r in on_store} == {store.id}


def test_a_released_reserve_without_a_warehouse_shows_0_in_a_changed_since_report(fresh):
    """doc: with changedSince «всегда включен вывод нулевых остатков», so a client learns the order let go."""
    catalog = fresh.catalog
    good = next(i for i in listed(catalog) if i.unbound_reserve)
    before = format_moment(moscow_now() - timedelta(seconds=1))[:19]
    catalog.reserve_without_store(good.id, 0)
    changed = report(fresh, "/report/stock/bystore/current", stockType="reserve", changedSince=before)
    assert {r["storeId"]: r["reserve"] for r in changed if r["assortmentId"] == good.id}[None] == 0
    now = report(fresh, "/report/stock/bystore/current", stockType="reserve", filter=f"assortmentId={good.id}")
    assert all(r["storeId"] for r in now)


def test_changed_since_gives_current_values_zero_lines_and_removals(fresh):
    catalog = fresh.catalog
    store = catalog.stores[0]
    goods = listed(catalog)
    changed, emptied, archived, deleted = goods[:4]
    before = format_moment(moscow_now() - timedelta(seconds=1))[:19]
    catalog.set_stock(changed.id, store.id, stock=5)
    catalog.set_stock(changed.id, store.id, stock=8)  # two changes: the report shows 8, not a delta
    for other in catalog.stores:
        catalog.set_stock(emptied.id, other.id, stock=0, reserve=0, in_transit=0)
    catalog.update_item(archived.id, archived=True)
    catalog.delete_item(deleted.id)
    rows = report(fresh, "/report/stock/all/current", changedSince=before)
    values = {r["assortmentId"]: r["stock"] for r in rows}
    assert values == {changed.id: 8 + sum(changed.stock[3::3]), emptied.id: 0, archived.id: 0, deleted.id: 0}
    by_store = report(fresh, "/report/stock/bystore/current", changedSince=before, filter=f"assortmentId={changed.id}")
    expected = {store.id: changed.stock[3 * n] for n, store in enumerate(catalog.stores)}
    assert {r["storeId"]: r["stock"] for r in by_store} == expected
    too_old = format_moment(moscow_now() - timedelta(hours=25))[:19]
    future = format_moment(moscow_now() + timedelta(minutes=5))[:19]
    for moment in (too_old, future):
        refused = get(fresh, "/report/stock/all/current", changedSince=moment)
        assert refused.status_code == 400 and error_code(refused) == 1040
    assert archived.id not in {r["assortmentId"] for r in report(fresh, "/report/stock/all/current",
                                                                 include="zeroLines")}


def test_goods_being_recalculated_are_left_out(fresh):
    catalog = fresh.catalog
    item = next(i for i in listed(catalog) if totals(i)[0] != 0)
    catalog.set_recalculating(item.id)
    assert item.id not in row_ids(report(fresh, filter="stockMode=all;quantityMode=all"))
    assert item.id not in {r["assortmentId"] for r in report(fresh, "/report/stock/all/current")}
    with_null = report(fresh, "/report/stock/bystore/current", withRecalculate="true", filter=f"assortmentId={item.id}")
    assert {r["stock"] for r in with_null} == {None} and len(with_null) == len(catalog.stores)
    catalog.set_recalculating(item.id, False)
    assert item.id in {r["assortmentId"] for r in report(fresh, "/report/stock/all/current")}


def test_an_operation_brings_a_never_stocked_good_into_the_reports(fresh):
    catalog = fresh.catalog
    item = next(i for i in catalog.items.values() if i.stock is not None and not i.operated and not i.archived
                and not i.variant_ids)
    wide = f"stockMode=all;quantityMode=all;{item.kind}={href(fresh, item.kind, item.id)}"
    assert row_ids(report(fresh, filter=wide)) == []
    catalog.set_stock(item.id, catalog.stores[0].id, stock=3)
    time.sleep(0.01)
    assert row_ids(report(fresh, filter=wide)) == [item.id]
    new_id = catalog.add_product(name="Новинка без движений", price_kopecks=1000.0)
    assert new_id not in {r["assortmentId"] for r in report(fresh, "/report/stock/all/current", include="zeroLines")}
