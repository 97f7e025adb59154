"""The ICML feed, parsed back and checked rule by rule against the emulator's catalog."""

import collections
import contextlib
import dataclasses
import json
import sqlite3
from decimal import Decimal

import pytest
from lxml import etree

from core.settings import FeedSettings, ParamMapping, Settings
from emulator.harness import client_settings
from feeds.build import BuildFailed, build_feed
from feeds.icml import category_tree, unit_xml
from store import CatalogStore
from tests.moysklad.test_sync import dump


def feed_settings(tmp_path, emulator, **options) -> Settings:
    options.setdefault("pictures", "none")
    return Settings(data_dir=tmp_path / "data", moysklad=client_settings(emulator),
                    feeds=(FeedSettings(name="main", **options),), public_url="https://feeds.example")


def build(settings, **kwargs):
    return build_feed(settings, settings.feeds[0], **kwargs)


def parse(settings, name="main"):
    return etree.parse(str(settings.data_dir / "feeds" / f"{name}.xml"))


def offers_by_id(document):
    return {o.get("id"): o for o in document.iterfind(".//offer")}


def live(catalog):
    return [i for i in catalog.items.values() if not i.archived]


# The names of the default emulator catalog (300 products, seed 1) that the feed must not show as they are, and
# what it shows instead: control characters removed, spaces around trimmed ("" : no offer). Written out, not
# taken from feeds.icml.clean_text, the code under test.
FEED_NAMES = {
    "Товар\x01с управляющим\x0bсимволом": "Товарс управляющимсимволом",
    "": "",
    " (Бежевый, XL)": "(Бежевый, XL)",  # the variants of a product without a name
    " (Синий, 42)": "(Синий, 42)",
}


def feed_name(name: str) -> str:
    """A name as the feed shows it; any name not listed above must need no cleaning (else list it)."""
    if name in FEED_NAMES:
        return FEED_NAMES[name]
    assert name == name.strip() and name.isprintable() and 0 < len(name) <= 255, f"add {name!r} to FEED_NAMES"
    return name


def rubles(kopecks):
    return f"{round(kopecks) // 100}.{round(kopecks) % 100:02d}"


def selling_price(catalog, item, index: int) -> float:
    """What an offer sells at in a price type: its own, else (none: MoySklad lists it as 0) its product's."""
    own = item.sale_prices[index] if item.sale_prices else 0.0
    return own or (catalog.items[item.parent_id].sale_prices[index] if item.parent_id else own)


def nothing_available(catalog, item) -> bool:
    """A good in stock with all of it reserved (the stock report's default quantityMode leaves it out)."""
    stores = range(len(catalog.stores))
    stock, reserve = (sum(item.stock[3 * w + k] for w in stores) for k in (0, 1))
    in_transit = sum(item.stock[3 * w + 2] for w in stores)
    return item.operated and stock > 0 and stock - reserve + in_transit == 0


@pytest.fixture
def catalog_feed(tmp_path, emulator):
    """A default feed built from the emulator's catalog: (settings, parsed document, build result)."""
    settings = feed_settings(tmp_path, emulator)
    result = build(settings)
    return settings, parse(settings), result


def test_every_product_or_each_of_its_variants_is_one_offer(catalog_feed, emulator):
    _, document, result = catalog_feed
    catalog = emulator.catalog
    offers = offers_by_id(document)
    expected = set()
    for item in live(catalog):
        if item.kind == "variant":
            expected.add(item.id)
        elif item.kind == "product" and not item.variant_ids or item.kind in ("service", "bundle"):
            expected.add(item.id)
    skipped = {i.id for i in live(catalog) if not feed_name(i.name)}
    assert set(offers) == expected - skipped
    assert result.offers == len(offers)
    for item in live(catalog):
        if item.kind == "variant" and item.id in offers:
            assert offers[item.id].get("productId") == item.parent_id
            # a product without a name lends none: its variants' offers carry their own name there
            product_name = feed_name(catalog.items[item.parent_id].name) or feed_name(item.name)
            assert offers[item.id].findtext("productName") == product_name
        elif item.id in offers:
            assert offers[item.id].get("productId") == item.id


def test_names_prices_cost_and_codes_follow_the_catalog(catalog_feed, emulator):
    _, document, _ = catalog_feed
    catalog = emulator.catalog
    offers = offers_by_id(document)
    checked = collections.Counter()
    for item in live(catalog):
        offer = offers.get(item.id)
        if offer is None:
            continue
        assert offer.findtext("name") == feed_name(item.name)
        assert offer.findtext("xmlId") == item.external_code
        assert offer.findtext("price") == rubles(selling_price(catalog, item, 0))
        if item.operated and sum(item.stock[0::3]) > 0:  # in the stock report, whatever is available
            assert offer.findtext("purchasePrice") == rubles(item.cost)
            checked["cost"] += 1
            checked["cost, nothing available"] += nothing_available(catalog, item)
        elif item.operated:  # none in stock: MoySklad reports a cost of 0, which is none; retailCRM keeps its own
            assert offer.findtext("purchasePrice") is None
            checked["none in stock, no cost"] += 1
        elif item.stocked:  # never took part in an operation: in no stock report, cost unknown
            assert offer.findtext("purchasePrice") is None
            checked["no cost"] += 1
        if item.kind == "variant":
            params = {p.get("name"): (p.get("code"), p.text) for p in offer.iterfind("param")}
            for index, value in item.characteristics:
                name, code = (("Цвет", "color"), ("Размер", "size"))[index]
                assert params[name] == (code, value)
            checked["variant"] += 1
            checked["own price" if item.sale_prices else "product price"] += 1
        article = item.article or (catalog.items[item.parent_id].article if item.parent_id else "")
        if article:
            assert offer.find("param[@code='article']").text == article
    assert checked["cost"] and checked["own price"] and checked["product price"]
    assert checked["cost, nothing available"] and checked["no cost"] and checked["none in stock, no cost"]


def test_free_stock_sums_the_warehouses_and_never_goes_negative(tmp_path, emulator):
    catalog = emulator.catalog
    for rule, formula in (("free", lambda s, r, t: s - r), ("stock", lambda s, r, t: s),
                          ("quantity", lambda s, r, t: s - r + t)):
        settings = feed_settings(tmp_path / rule, emulator, quantity=rule, min_ratio=0)
        build(settings)
        offers = offers_by_id(parse(settings))
        negatives = 0
        for item in live(catalog):
            if item.id not in offers or not item.stocked:
                continue
            totals = [sum(item.stock[w * 3 + k] for w in range(len(catalog.stores))) for k in range(3)]
            totals[1] += item.unbound_reserve or 0  # every warehouse: the reserve without one counts too
            expected = max(formula(*totals), 0)
            negatives += formula(*totals) < 0
            assert float(offers[item.id].get("quantity")) == pytest.approx(expected), (rule, item.name)
        if rule == "free":
            assert negatives, "the generated catalog has goods with more reserved than in stock"


def test_only_the_named_warehouses_count(tmp_path, emulator):
    catalog = emulator.catalog
    first = catalog.stores[0]
    settings = feed_settings(tmp_path, emulator, stores=(first.name,))
    build(settings)
    offers = offers_by_id(parse(settings))
    for item in live(catalog):
        if item.id in offers and item.stocked:
            assert float(offers[item.id].get("quantity")) == pytest.approx(max(item.stock[0] - item.stock[1], 0))


def test_units_carry_the_codes_of_retailcrms_own_icml_example(shared_fixtures):
    """Goods sold by the metre get retailCRM's code for it, not one of our own making."""
    example = etree.parse(str(shared_fixtures / "icml" / "retailcrm-doc-example-ru.xml"))
    codes = {unit.get("name"): unit.get("code") for unit in example.iterfind(".//unit")}
    ours = {unit.get("name"): unit.get("code") for unit in (
        etree.fromstring(unit_xml({"code": "006", "name": "м", "description": "Метр"})),
        etree.fromstring(unit_xml({"code": "796", "name": "шт", "description": "Штука"})))}
    assert ours == codes == {"Метр": "meter", "Штука": "pcs"}


def test_a_reserve_without_a_warehouse_counts_in_a_feed_over_every_warehouse_only(tmp_path, emulator):
    """MoySklad's short report by warehouse gives a reserve made without a warehouse as the row with storeId
    null (md/reports/_report_stock.md): the sync keeps it as warehouse "", which every warehouse's free stock
    loses, and a feed naming its warehouses does not."""
    catalog = emulator.catalog
    reserved = [i for i in live(catalog) if i.stocked and i.unbound_reserve]
    assert reserved, "the generated catalog has goods reserved without a warehouse"
    first = catalog.stores[0]
    everywhere, named = feed_settings(tmp_path / "all", emulator), feed_settings(tmp_path / "one", emulator,
                                                                                stores=(first.name,))
    build(everywhere)
    build(named)
    over_all, over_first = offers_by_id(parse(everywhere)), offers_by_id(parse(named))
    lowered = 0
    for item in reserved:
        if item.id not in over_all:
            continue
        stock, reserve = (sum(item.stock[3 * w + k] for w in range(len(catalog.stores))) for k in (0, 1))
        expected = max(stock - reserve - item.unbound_reserve, 0)
        assert float(over_all[item.id].get("quantity")) == pytest.approx(expected), item.name
        assert float(over_first[item.id].get("quantity")) == pytest.approx(max(item.stock[0] - item.stock[1], 0))
        lowered += expected < max(stock - reserve, 0)
    assert lowered, "some published figure is lowered by a reserve without a warehouse"


def test_services_bundles_units_and_vat(catalog_feed, emulator):
    _, document, _ = catalog_feed
    catalog = emulator.catalog
    offers = offers_by_id(document)
    kinds = collections.Counter()
    for item in live(catalog):
        offer = offers.get(item.id)
        if offer is None:
            continue
        card = catalog.items[item.parent_id] if item.parent_id else item
        if item.kind == "service":
            assert offer.get("type") == "service" and offer.get("quantity") is None
        else:
            assert offer.get("type") == "product"
        kinds[item.kind] += 1
        unit = offer.find("unit")
        assert unit.get("code") == {0: "pcs", 1: "kg"}.get(card.uom, unit.get("code"))
        vat = offer.findtext("vatRate")
        if not card.use_parent_vat:
            assert vat == ("none" if not card.vat_enabled else str(card.vat))
    assert kinds["service"] and kinds["bundle"] and kinds["variant"]
    assert any(o.findtext("vatRate") == "none" for o in offers.values())
    assert any(o.findtext("vatRate") == "0" for o in offers.values())


def test_bundles_can_be_left_out(tmp_path, emulator):
    settings = feed_settings(tmp_path, emulator, include_bundles=False)
    build(settings)
    offers = offers_by_id(parse(settings))
    bundles = [i.id for i in live(emulator.catalog) if i.kind == "bundle"]
    assert bundles and not set(bundles) & set(offers)


def test_categories_form_a_tree_and_every_offer_points_into_it(catalog_feed, emulator):
    _, document, _ = catalog_feed
    categories = {c.get("id"): c for c in document.iterfind(".//category")}
    assert categories["uncategorized"].text == "Без категории"
    seen = set()
    for category in document.iterfind(".//category"):
        parent = category.get("parentId")
        assert parent is None or parent in seen  # parents come first
        seen.add(category.get("id"))
    folders = emulator.catalog.folders
    assert {f.id for f in folders.values() if not f.archived} <= set(categories)
    for offer in document.iterfind(".//offer"):
        assert offer.findtext("categoryId") in categories
    in_no_folder = [i for i in live(emulator.catalog) if i.kind != "variant" and not i.folder_id]
    offers = offers_by_id(document)
    assert any(offers[i.id].findtext("categoryId") == "uncategorized" for i in in_no_folder if i.id in offers)


def test_hostile_names_are_escaped_cleaned_capped_or_skipped(catalog_feed, emulator):
    settings, document, result = catalog_feed
    text = (settings.data_dir / "feeds" / "main.xml").read_text(encoding="utf-8")
    assert "\x01" not in text and "\x0b" not in text
    names = [o.findtext("name") for o in document.iterfind(".//offer")]
    assert any("&" in n and "<" in n and '"' in n for n in names)
    assert any("🎁" in n for n in names)
    assert any("Товарс управляющимсимволом" in n for n in names)
    assert all(0 < len(n) <= 255 for n in names)
    empty = [i for i in live(emulator.catalog) if not feed_name(i.name) and not i.variant_ids]  # offers only
    assert result.skipped["пустое наименование"] == len(empty) > 0
    store = CatalogStore(settings.store_path)
    skipped = store.skipped_items(result.run_id)
    store.close()
    assert {s["item_id"] for s in skipped if s["reason"] == "пустое наименование"} == {i.id for i in empty}


def test_templates_vendor_attribute_params_and_barcodes(tmp_path, emulator):
    settings = feed_settings(
        tmp_path, emulator, xml_id="{product.externalCode}#{externalCode}", url="https://shop.example/p/{code}",
        vendor_attribute="Бренд", params=(ParamMapping(attribute="Материал", code="material"),
                                          ParamMapping(attribute="Гарантия, мес", name="Гарантия")))
    build(settings)
    offers = offers_by_id(parse(settings))
    catalog = emulator.catalog
    attribute_names = [a.name for a in catalog.attribute_defs]
    seen = collections.Counter()
    for item in live(catalog):
        offer = offers.get(item.id)
        if offer is None:
            continue
        card = catalog.items[item.parent_id] if item.parent_id else item
        assert offer.findtext("xmlId") == f"{card.external_code}#{item.external_code}"
        assert offer.findtext("url") == f"https://shop.example/p/{item.code}"
        values = {attribute_names[index]: value for index, value in card.attributes}
        if "Бренд" in values:
            assert offer.findtext("vendor") == values["Бренд"]
            seen["vendor"] += 1
        if "Материал" in values:
            assert offer.find("param[@code='material']").text == values["Материал"]
            seen["material"] += 1
        if "Гарантия, мес" in values:
            assert offer.find("param[@name='Гарантия']").text == str(int(values["Гарантия, мес"]))
            seen["warranty"] += 1
        barcodes = [v for kind, v in item.barcodes if kind == "ean13"]
        if barcodes:
            assert offer.findtext("barcode") == barcodes[0]
            seen["barcode"] += 1
        if card.weight:
            assert float(offer.findtext("weight")) == pytest.approx(card.weight, abs=0.001)
    assert min(seen.values()) > 0 and len(seen) == 4


def test_a_variant_without_a_price_of_its_own_takes_the_products(tmp_path, emulator):
    catalog = emulator.catalog
    variant = next(i for i in live(catalog) if i.kind == "variant" and not i.sale_prices and i.name.strip())
    settings = feed_settings(tmp_path, emulator)
    build(settings)
    offer = offers_by_id(parse(settings))[variant.id]
    assert offer.findtext("price") == rubles(catalog.items[variant.parent_id].sale_prices[0])


def test_price_type_and_purchase_price_rules(tmp_path, emulator):
    catalog = emulator.catalog
    wholesale = catalog.price_types[1]
    checked = collections.Counter()
    for rule in ("buyPrice", "none"):
        settings = feed_settings(tmp_path / rule, emulator, price_type=wholesale.name, purchase_price=rule)
        build(settings)
        offers = offers_by_id(parse(settings))
        for item in live(catalog):
            if item.id not in offers:
                continue
            card = catalog.items[item.parent_id] if item.parent_id else item
            assert offers[item.id].findtext("price") == rubles(selling_price(catalog, item, 1))
            checked["own"] += bool(item.parent_id and item.sale_prices and item.sale_prices[1])
            checked["product's, the variant's own being 0"] += bool(item.parent_id and item.sale_prices
                                                                     and not item.sale_prices[1])
            buy = item.buy_price if item.buy_price is not None else card.buy_price
            expected = rubles(buy) if rule == "buyPrice" and buy is not None else None
            assert offers[item.id].findtext("purchasePrice") == expected
    assert checked["own"] and checked["product's, the variant's own being 0"]


def test_a_name_the_account_lacks_fails_the_build_before_the_sync(tmp_path, emulator):
    """A wrong price type, warehouse or attribute is found with one small request, not after a whole sync."""
    catalog = emulator.catalog
    price_types = ", ".join(f"«{p.name}»" for p in catalog.price_types)
    warehouses = ", ".join(f"«{s.name}»" for s in catalog.stores)
    attributes = ", ".join(f"«{a.name}»" for a in catalog.attribute_defs)
    cases = (({"price_type": "Цена для своих"}, "/context/companysettings",
              f"feed main: price_type «Цена для своих» is not a price type in MoySklad (price types there: {price_types})"),
             ({"stores": ("Основной склад", "Склад на Луне")}, "/entity/store",
              f"feed main: stores: «Склад на Луне» is not a warehouse in MoySklad (warehouses there: {warehouses})"),
             ({"params": (ParamMapping("Материал"), ParamMapping("Цвет корпуса"))}, "/entity/product/metadata/attributes",
              (f"feed main: params[1].attribute «Цвет корпуса» is not an attribute of goods in MoySklad "
               f"(attributes there: {attributes})")))
    for options, asked, message in cases:
        emulator.reset_stats()
        settings = feed_settings(tmp_path, emulator, **options)
        with pytest.raises(BuildFailed) as error:
            build(settings)
        assert str(error.value) == message
        assert [entry["path"] for entry in emulator.request_log] == [asked]  # one request, no sync
        store = CatalogStore(settings.store_path)
        failed = store.last_run("feed:main", "build")
        store.close()
        assert (failed["status"], failed["error"]) == ("failed", message)  # the health page shows it
    assert not (settings.data_dir / "feeds" / "main.xml").exists()


def test_a_name_gone_from_the_store_fails_the_render_by_name(tmp_path, emulator):
    settings = feed_settings(tmp_path, emulator)
    build(settings)
    renamed = feed_settings(tmp_path, emulator, price_type="Цена для своих")
    with pytest.raises(BuildFailed, match="price type «Цена для своих» does not exist"):
        build(renamed, sync=False)  # no MoySklad request: the renderer finds it in the store
    moved = feed_settings(tmp_path, emulator, stores=("Склад на Луне",))
    with pytest.raises(BuildFailed, match="warehouse «Склад на Луне» does not exist"):
        build(moved, sync=False)


def test_an_out_of_range_price_skips_the_offer_with_its_reason(tmp_path, emulator):
    catalog = emulator.catalog
    item = next(i for i in live(catalog) if i.kind == "product" and not i.variant_ids and i.name.strip())
    catalog.corrupt_item(item.id, salePrices=[{"value": 1e13, "priceType": {
        "meta": {"href": f"{emulator.base_url}/context/companysettings/pricetype/{catalog.price_types[0].id}",
                 "type": "pricetype"}, "id": catalog.price_types[0].id, "name": catalog.price_types[0].name}}])
    settings = feed_settings(tmp_path, emulator)
    result = build(settings)
    assert item.id not in offers_by_id(parse(settings))
    # the one product of the default catalog without a name (FEED_NAMES) and the one priced out of range
    assert result.skipped == {"пустое наименование": 1, "цена вне допустимого диапазона (0 … 99 999 999)": 1}


def test_folder_links_that_loop_or_break_become_roots_and_each_folder_is_written_once():
    def folders(*links):
        return [{"id": folder, "parent_id": parent, "name": folder.upper()} for folder, parent in links]

    assert category_tree(folders(("a", "a"))) == [("a", None, "A")]  # its own parent (a nested Группа, same Ид)
    assert category_tree(folders(("a", "b"), ("b", "a"), ("c", "gone"))) == [
        ("b", None, "B"), ("a", "b", "A"), ("c", None, "C")]
    deep = category_tree(folders(*((f"f{n}", f"f{n - 1}" if n else None) for n in range(5000, -1, -1))))
    assert len(deep) == 5001 and deep[0] == ("f0", None, "F0") and deep[-1] == ("f5000", "f4999", "F5000")


def store_edit(settings, sql: str, *params) -> None:
    """Change the store by hand (values no writer of this service makes, or a source sends rarely)."""
    with contextlib.closing(sqlite3.connect(settings.store_path)) as conn, conn:
        conn.execute(sql, params)


def test_a_weight_or_barcode_retailcrm_would_refuse_is_left_out_of_the_offer(tmp_path, emulator):
    settings = feed_settings(tmp_path, emulator)
    build(settings)
    goods = [i for i in live(emulator.catalog) if i.kind == "product" and not i.variant_ids and i.name.strip()]
    weights = {goods[0].id: -2.5, goods[1].id: 12_345_678, goods[2].id: 0.0004, goods[3].id: 9_999_999}
    for good_id, weight in weights.items():
        store_edit(settings, "UPDATE products SET weight = ? WHERE id = ?", weight, good_id)
    store_edit(settings, "UPDATE offers SET barcodes = ? WHERE id = ?", '[{"code128": "ABC123\\n"}]', goods[0].id)
    store_edit(settings, "UPDATE offers SET barcodes = ? WHERE id = ?", '[{"code128": "ABC123"}]', goods[1].id)
    build(settings, sync=False)
    offers = offers_by_id(parse(settings))
    assert [offers[good_id].findtext("weight") for good_id in weights] == [None, None, None, "9999999"]
    assert (offers[goods[0].id].findtext("barcode"), offers[goods[1].id].findtext("barcode")) == (None, "ABC123")


def test_a_buy_price_of_0_is_none_and_a_variant_with_0_takes_its_products(tmp_path, emulator):
    """MoySklad sends an unset buy price as 0 (the vendor's variant_list.json): published, 0 would overwrite the
    purchase price retailCRM keeps; a variant's 0 is no price of its own."""
    settings = feed_settings(tmp_path, emulator, purchase_price="buyPrice")
    build(settings)
    catalog = emulator.catalog
    variant = next(i for i in live(catalog) if i.kind == "variant" and i.name.strip()
                   and catalog.items[i.parent_id].buy_price)
    good = next(i for i in live(catalog) if i.kind == "product" and not i.variant_ids and i.name.strip())
    store_edit(settings, "UPDATE offers SET buy_price = 0 WHERE id IN (?, ?)", variant.id, good.id)
    build(settings, sync=False)
    offers = offers_by_id(parse(settings))
    assert offers[variant.id].findtext("purchasePrice") == rubles(catalog.items[variant.parent_id].buy_price)
    assert offers[good.id].findtext("purchasePrice") is None


def test_an_xml_id_longer_than_retailcrm_takes_skips_the_offer_instead_of_cutting_it(tmp_path, emulator):
    """Cut, it would match nothing in MoySklad (orders would not reach it), or another offer's."""
    settings = feed_settings(tmp_path, emulator, xml_id="{product.externalCode}#{externalCode}")
    build(settings)
    catalog = emulator.catalog
    product = next(i for i in live(catalog) if i.kind == "product" and len(i.variant_ids) > 1)
    store_edit(settings, "UPDATE products SET external_code = ? WHERE id = ?", "P" * 250, product.id)
    result = build(settings, sync=False)
    offers = offers_by_id(parse(settings))
    assert not set(product.variant_ids) & set(offers) and offers
    reason = "xmlId длиннее 255 символов: заказы с ним не дойдут до МойСклад; проверьте шаблон xml_id"
    assert result.skipped[reason] == len(product.variant_ids)


def test_an_infinite_number_in_the_store_skips_the_offer_not_the_feed(tmp_path, emulator):
    """The writers refuse infinite numbers; a store edited by hand may hold one, and JSON cannot."""
    settings = feed_settings(tmp_path, emulator)
    build(settings)
    item = next(i for i in live(emulator.catalog) if i.kind == "product" and not i.variant_ids and i.name.strip())
    assert item.id in offers_by_id(parse(settings))
    with contextlib.closing(sqlite3.connect(settings.store_path)) as conn, conn:
        conn.execute("UPDATE products SET weight = 9e999 WHERE id = ?", [item.id])
    result = build(settings, sync=False)
    published = offers_by_id(parse(settings))
    assert item.id not in published and len(published) == result.offers > 0
    assert result.skipped["в хранилище у товара значение, которое не является конечным числом (остаток, цена или вес)"] == 1


def test_archived_and_removed_goods_stay_inactive_for_a_while_then_drop_out(tmp_path, emulator):
    catalog = emulator.catalog
    simple = [i for i in live(catalog) if i.kind == "product" and not i.variant_ids and i.name.strip()]
    archived_now, removed_now = simple[0], simple[1]
    settings = feed_settings(tmp_path, emulator, inactive_days=30)
    build(settings)
    catalog.update_item(archived_now.id, archived=True)
    catalog.delete_item(removed_now.id)
    build_feed(settings, settings.feeds[0])  # incremental: sees the archiving
    store = CatalogStore(settings.store_path)
    store.db.execute("UPDATE source_settings SET value = '2000-01-01T00:00:00+00:00' WHERE key = 'last_full_sync'")
    store.db.conn.commit()
    store.close()
    build(settings)  # a full sync (it is due) notices the deletion
    offers = offers_by_id(parse(settings))
    assert offers[archived_now.id].findtext("productActivity") == "N"
    assert offers[removed_now.id].findtext("productActivity") == "N"
    active = [o for o in offers.values() if o.find("productActivity") is None]
    assert len(active) == len(offers) - 2
    long_archived = [i for i in catalog.items.values() if i.archived and i.id != archived_now.id]
    assert long_archived and not {i.id for i in long_archived} & set(offers)  # archived a year ago: gone

    dropped = dataclasses.replace(settings, feeds=(dataclasses.replace(settings.feeds[0], inactive_days=0),))
    build(dropped, sync=False)
    offers = offers_by_id(parse(dropped))
    assert archived_now.id not in offers and removed_now.id not in offers


def test_the_guard_refuses_a_shrunken_feed_and_force_publishes_it(tmp_path, emulator):
    settings = feed_settings(tmp_path, emulator)
    first = build(settings)
    path = settings.data_dir / "feeds" / "main.xml"
    before = path.read_bytes()
    doomed = [i.id for i in emulator.catalog.items.values() if i.kind in ("product", "service", "bundle")]
    for item_id in doomed[: len(doomed) // 2]:
        emulator.catalog.delete_item(item_id)
    store = CatalogStore(settings.store_path)
    store.db.execute("UPDATE source_settings SET value = '2000-01-01T00:00:00+00:00' WHERE key = 'last_full_sync'")
    store.db.conn.commit()
    with pytest.raises(BuildFailed) as error:
        build(settings)
    assert f"active offers, fewer than 70% of the {first.offers} published last time" in str(error.value)
    assert "--force" in str(error.value)
    assert path.read_bytes() == before
    last = store.last_run("feed:main", "build")
    assert last["status"] == "failed" and last["counts"]["guard"] == "refused"
    forced = build(settings, force=True, sync=False)
    offers = offers_by_id(parse(settings)).values()
    assert forced.published and len(offers) == forced.offers
    assert sum(o.find("productActivity") is None for o in offers) < 0.7 * first.offers
    assert (settings.data_dir / "feeds" / "main.previous.xml").read_bytes() == before
    store.close()


def test_the_build_is_recorded_with_counts(catalog_feed):
    settings, _, result = catalog_feed
    store = CatalogStore(settings.store_path)
    run = store.last_run("feed:main", "build", "ok")
    store.close()
    assert run["id"] == result.run_id
    counts = run["counts"]
    assert counts["offers"] == result.offers and counts["published"] is True and counts["guard"] == "passed"
    assert counts["size"] == (settings.data_dir / "feeds" / "main.xml").stat().st_size
    assert counts["skipped_by_reason"] == result.skipped
    assert json.loads(json.dumps(counts["skipped_examples"]))["пустое наименование"][0]["id"]


def published_goods(catalog, offers):
    """(item, its offer) for every live item of the catalog that the feed has an offer for."""
    return ((item, offers[item.id]) for item in live(catalog) if item.id in offers)


def card_of(catalog, item):
    return catalog.items[item.parent_id] if item.parent_id else item


def bundle_by_hand(catalog, bundle, rule="free", stores=None):
    """What a bundle can be sold of, from the emulator's own objects, in exact decimals."""
    every, stores = stores is None, range(len(catalog.stores)) if stores is None else stores
    sets = []
    for part_id, per_bundle in bundle.components:
        good = catalog.items.get(part_id)
        if good is None or good.archived or card_of(catalog, good).archived:
            return 0
        if good.kind == "service":
            continue
        stock, reserve, in_transit = (sum(Decimal(str(good.stock[3 * w + k])) for w in stores) for k in range(3))
        if every:  # every warehouse: the reserve without one counts too
            reserve += Decimal(str(good.unbound_reserve or 0))
        value = {"free": stock - reserve, "stock": stock, "quantity": stock - reserve + in_transit}[rule]
        sets.append(max(value, 0) // Decimal(str(per_bundle)))
    return min(sets) if sets else None


def test_zero_available_goods_keep_cost_and_picture_and_never_operated_ones_publish_0(tmp_path, emulator):
    catalog = emulator.catalog
    settings = feed_settings(tmp_path, emulator, pictures="cache")
    build(settings)
    offers = offers_by_id(parse(settings))
    seen = collections.Counter()
    for item, offer in published_goods(catalog, offers):
        if not item.stocked:
            continue
        if nothing_available(catalog, item):
            assert offer.findtext("purchasePrice") == rubles(item.cost), item.name
            assert float(offer.get("quantity")) == 0
            own = catalog.image_ids(item)
            if own:
                assert offer.findtext("picture") == f"{settings.images_url}/{own[0]}.png", item.name
                seen["picture"] += 1
            seen["nothing available"] += 1
        elif not item.operated:
            assert offer.get("quantity") == "0" and offer.find("purchasePrice") is None, item.name
            seen["never operated"] += 1
    assert seen["nothing available"] and seen["picture"] and seen["never operated"]


def test_bundles_publish_as_many_as_their_components_make(tmp_path, emulator_factory):
    emulator = emulator_factory(products=1500, seed=6)
    catalog = emulator.catalog
    bundles = [b for b in live(catalog) if b.kind == "bundle" and b.name.strip()]
    first = catalog.stores[0]
    seen = collections.Counter()
    for rule, stores in (("free", None), ("stock", None), ("quantity", None), ("free", (first.name,))):
        options = {"quantity": rule, "min_ratio": 0} | ({"stores": stores} if stores else {})
        settings = feed_settings(tmp_path / f"{rule}-{bool(stores)}", emulator, **options)
        build(settings)
        offers = offers_by_id(parse(settings))
        for bundle in bundles:
            expected = bundle_by_hand(catalog, bundle, rule, [0] if stores else None)
            published = offers[bundle.id].get("quantity")
            assert (None if published is None else Decimal(published)) == expected, (rule, stores, bundle.name)
            parts = [catalog.items.get(part) for part, _ in bundle.components]
            seen["sellable"] += bool(expected)
            seen["archived component"] += any(p is not None and p.archived for p in parts)
            seen["fractional"] += any(not float(q).is_integer() for _, q in bundle.components) and bool(expected)
            seen["service"] += any(p is not None and p.kind == "service" for p in parts)
    assert all(seen[case] for case in ("sellable", "archived component", "fractional", "service")), seen


def test_archived_folders_are_published_only_while_the_feed_has_goods_in_them(catalog_feed, emulator):
    _, document, _ = catalog_feed
    folders = emulator.catalog.folders
    published = {c.get("id") for c in document.iterfind(".//category")}
    used = {o.findtext("categoryId") for o in document.iterfind(".//offer")}
    children = collections.defaultdict(list)
    for folder in folders.values():
        children[folder.parent_id].append(folder)

    def holds(folder) -> bool:  # a good of the feed or a live folder in it, or below it
        return folder.id in used or any(not child.archived or holds(child) for child in children[folder.id])

    for folder in folders.values():
        assert (folder.id in published) == (not folder.archived or holds(folder)), folder.name
    empty, full = list(folders.values())[-1], list(folders.values())[-2]  # as the generator makes them
    assert empty.archived and empty.id not in published
    assert full.archived and full.id in published
    assert sum(f.archived and f.id not in published for f in folders.values()) >= 1


def test_marked_goods_are_markable(catalog_feed, emulator):
    _, document, _ = catalog_feed
    catalog = emulator.catalog
    offers = offers_by_id(document)
    seen = collections.Counter()
    for item, offer in published_goods(catalog, offers):
        marked = card_of(catalog, item).tracking_type != "NOT_TRACKED"
        assert offer.findtext("markable") == ("Y" if marked else None), item.name
        seen[(item.kind, marked)] += 1
    assert seen[("product", True)] and seen[("variant", True)] and seen[("product", False)]
    assert [child.tag for child in next(o for o in offers.values() if o.find("markable") is not None)][-1] == "markable"


def test_a_full_sync_through_truncated_answers_publishes_the_same_feed(tmp_path, emulator_factory):
    server = emulator_factory(products=1500, seed=4)

    def settings_for(name):
        return Settings(data_dir=tmp_path / name, feeds=(FeedSettings(name="main", pictures="none"),),
                        moysklad=client_settings(server, page_size=100, max_retries=8), public_url="https://feeds.example")

    clean = settings_for("clean")
    build(clean)
    server.faults.update({"truncate_rate": 0.08, "seed": 3})
    faulty = settings_for("faulty")
    result = build(faulty)
    server.faults.update({"truncate_rate": 0.0})

    assert result.published and result.sync.retries > 0  # only truncation was switched on
    with CatalogStore(clean.store_path) as a, CatalogStore(faulty.store_path) as b:
        left, right = dump(a), dump(b)
        bundles = [sorted(map(tuple, s.db.execute("SELECT * FROM bundle_components").fetchall())) for s in (a, b)]
    for table in ("categories", "products", "offers", "prices", "stock", "images", "attributes", "warehouses"):
        assert left[table] == right[table], table
    assert bundles[0] == bundles[1] and bundles[0]

    def body(settings):
        root = parse(settings).getroot()
        return [etree.tostring(element) for element in root.iter("category", "offer")]

    assert body(faulty) == body(clean)
