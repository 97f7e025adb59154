"""The ICML feed, parsed back and checked rule by rule against the emulator's catalog."""

import collections
import dataclasses
import json

import pytest
from lxml import etree

from core.settings import FeedSettings, ParamMapping, Settings
from emulator.harness import client_settings
from feeds.build import BuildFailed, build_feed
from feeds.icml import clean_text, param_code
from store import CatalogStore


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


def rubles(kopecks):
    return f"{round(kopecks) // 100}.{round(kopecks) % 100:02d}"


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
    skipped = {i.id for i in live(catalog) if not clean_text(i.name)}
    assert set(offers) == expected - skipped
    assert result.offers == len(offers)
    for item in live(catalog):
        if item.kind == "variant" and item.id in offers:
            assert offers[item.id].get("productId") == item.parent_id
            assert offers[item.id].findtext("productName") == clean_text(catalog.items[item.parent_id].name)
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
        assert offer.findtext("name") == clean_text(item.name)
        assert offer.findtext("xmlId") == item.external_code
        prices = item.sale_prices or catalog.items[item.parent_id].sale_prices  # a variant without its own takes the product's
        assert offer.findtext("price") == rubles(prices[0])
        if item.stocked:
            assert offer.findtext("purchasePrice") == rubles(item.cost)
            checked["cost"] += 1
        if item.kind == "variant":
            params = {p.get("name"): (p.get("code"), p.text) for p in offer.iterfind("param")}
            for index, value in item.characteristics:
                name = ("Цвет", "Размер")[index]
                assert params[name] == (param_code(name), value)
            checked["variant"] += 1
            checked["own price" if item.sale_prices else "product price"] += 1
        article = item.article or (catalog.items[item.parent_id].article if item.parent_id else "")
        if article:
            assert offer.find("param[@code='article']").text == article
    assert checked["cost"] and checked["own price"] and checked["product price"]


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
    assert {f.id for f in folders.values()} <= set(categories)
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
    empty = [i for i in live(emulator.catalog) if not clean_text(i.name)]
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
    variant = next(i for i in live(catalog) if i.kind == "variant" and not i.sale_prices and clean_text(i.name))
    settings = feed_settings(tmp_path, emulator)
    build(settings)
    offer = offers_by_id(parse(settings))[variant.id]
    assert offer.findtext("price") == rubles(catalog.items[variant.parent_id].sale_prices[0])


def test_price_type_and_purchase_price_rules(tmp_path, emulator):
    catalog = emulator.catalog
    wholesale = catalog.price_types[1]
    for rule in ("buyPrice", "none"):
        settings = feed_settings(tmp_path / rule, emulator, price_type=wholesale.name, purchase_price=rule)
        build(settings)
        offers = offers_by_id(parse(settings))
        for item in live(catalog):
            if item.id not in offers:
                continue
            card = catalog.items[item.parent_id] if item.parent_id else item
            prices = item.sale_prices or card.sale_prices
            assert offers[item.id].findtext("price") == rubles(prices[1])
            buy = item.buy_price if item.buy_price is not None else card.buy_price
            expected = rubles(buy) if rule == "buyPrice" and buy is not None else None
            assert offers[item.id].findtext("purchasePrice") == expected


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
    item = next(i for i in live(catalog) if i.kind == "product" and not i.variant_ids and clean_text(i.name))
    catalog.corrupt_item(item.id, salePrices=[{"value": 1e13, "priceType": {
        "meta": {"href": f"{emulator.base_url}/context/companysettings/pricetype/{catalog.price_types[0].id}",
                 "type": "pricetype"}, "id": catalog.price_types[0].id, "name": catalog.price_types[0].name}}])
    settings = feed_settings(tmp_path, emulator)
    result = build(settings)
    assert item.id not in offers_by_id(parse(settings))
    assert result.skipped == {"пустое наименование": result.skipped["пустое наименование"], "цена вне допустимого диапазона (0 … 99 999 999)": 1}


def test_archived_and_removed_goods_stay_inactive_for_a_while_then_drop_out(tmp_path, emulator):
    catalog = emulator.catalog
    simple = [i for i in live(catalog) if i.kind == "product" and not i.variant_ids and clean_text(i.name)]
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
