"""CommerceML catalog files → the catalog store: real samples, the ICML feed they give, and hostile files.

Expected counts of the samples come from a plain ``etree.parse`` of each file (see :func:`expected`),
never from the importer itself.
"""

import json
import os
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest
from lxml import etree

from core.pictures import MAX_PICTURE_BYTES
from core.settings import FeedSettings, ParamMapping, Settings
from emulator.harness import SHARED, child_pids, command_line
from exchange.catalog_import import deactivate_untouched, import_file
from exchange.cml import CommerceMLError
from feeds.build import build_feed
from store import open_catalog

SAMPLES = SHARED / "fixtures" / "commerceml"
CATALOG_TABLES = ("categories", "products", "offers", "price_types", "prices", "warehouses", "stock", "units",
                  "images", "attributes", "source_settings", "image_cache")
# The smallest JPEG header the importer checks for; the bytes after it are not looked at.
TINY_JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 32 + b"\xff\xd9"


@pytest.fixture
def samples() -> Path:
    if not SAMPLES.is_dir():
        pytest.skip("../shared/fixtures/commerceml is not present")
    return SAMPLES


@pytest.fixture
def dirs(tmp_path):
    """(upload_dir, images_dir) of one exchange."""
    upload = tmp_path / "upload"
    upload.mkdir()
    return upload, tmp_path / "data" / "images"


def load(store, dirs, path):
    return import_file(store, path, upload_dir=dirs[0], images_dir=dirs[1])


def rows(store, sql, *params):
    return [dict(r) for r in store.db.query(sql, params)]


def dump(store) -> dict:
    return {t: sorted(map(tuple, store.db.execute(f"SELECT * FROM {t}").fetchall()), key=repr) for t in CATALOG_TABLES}


def expected(path: Path) -> dict:
    """Groups, goods, offers, prices and stock rows of a file, counted with a plain parse."""
    root = etree.parse(str(path)).getroot()
    offers = root.findall("{*}ПакетПредложений/{*}Предложения/{*}Предложение")
    stock = 0
    for offer in offers:
        per_store = len(offer.findall("{*}Склад[@ИдСклада]")) + len(offer.findall("{*}Остатки/{*}Остаток/{*}Склад"))
        stock += per_store or int(offer.find("{*}Количество") is not None)
    return {
        "groups": sum(len(list(c.iter("{*}Группа"))) for c in root.findall("{*}Классификатор")),
        "goods": len(root.findall("{*}Каталог/{*}Товары/{*}Товар")),
        "offers": len(offers),
        "prices": sum(len(o.findall("{*}Цены/{*}Цена")) for o in offers),
        "stock": stock,
    }


def check_counts(result, path):
    counts = {key: result.counts.get(key, 0) for key in ("groups", "goods", "offers", "prices", "stock")}
    assert counts == expected(path), path.name


# --- the vendors' samples --------------------------------------------------------------------------

SAMPLE_SETS = {
    "1c-official-2.04": ["import.xml", "offers.xml"],
    "1c-ut10.3-2.05": ["import.xml", "offers.xml"],
    "1c-ut11-2.07": ["import0_1.xml", "offers0_1.xml"],
    "1c-ut11-2.07-nested": ["import0_1_with_nested_groups.xml"],
    "1c-2.09-multifile": ["import___b815e2db-7a65-4265-9241-5f0c4f0565a7.xml",
                          "offers___7f304edc-2527-4d3d-b058-6e4ee53de2e0.xml",
                          "offers___f0bab95c-14a6-4141-9746-6650b65f1191.xml",
                          "prices___d66a6b51-ce9c-4e7a-8c7c-25079721107f.xml",
                          "rests___1af6e7b8-a026-4690-9752-1c9d64cb914d.xml"],
    "bigperson-2.08-ns210": ["import.xml", "offers.xml"],
    "umi-cms-2.04": ["import.xml", "offers.xml"],
    "django-cml-2.05": ["import.xml"],
}


@pytest.mark.parametrize("sample", list(SAMPLE_SETS))
def test_every_catalog_sample_imports_with_the_counts_the_file_holds(samples, store, dirs, sample):
    folder = samples / sample.removesuffix("-nested")
    for name in SAMPLE_SETS[sample]:
        check_counts(load(store, dirs, folder / name), folder / name)
    counts = store.counts("exchange")
    assert counts["offers"] > 0 and counts["products"] > 0
    assert not rows(store, "SELECT id FROM offers o WHERE source='exchange' AND NOT EXISTS "
                           "(SELECT 1 FROM products p WHERE p.source='exchange' AND p.id=o.product_id)")


def test_official_sample_variants_from_import_and_a_full_offers_file(samples, store, dirs):
    folder = samples / "1c-official-2.04"
    assert load(store, dirs, folder / "import.xml").kind == "import"
    variants = rows(store, "SELECT * FROM offers WHERE kind='variant' ORDER BY id")
    assert len(variants) == 4 and {v["product_id"] for v in variants} == {
        "05e26d70-01e4-11dc-a411-00055d80a2d1", "05e26d77-01e4-11dc-a411-00055d80a2d1"}
    assert json.loads(variants[0]["characteristics"]) == [{"name": "Цвет", "value": "Белый"}]
    cards = rows(store, "SELECT * FROM products ORDER BY name")
    assert [(c["name"], c["vat"], c["vat_enabled"], c["unit_id"]) for c in cards] == [
        ("Стол обеденный", 18.0, 1, "796"), ("Стулья", 18.0, 1, "796")]
    assert rows(store, "SELECT name, code, description FROM units") == [{"name": "шт", "code": "796", "description": "Штука"}]
    assert store.setting("exchange", "company") == 'Торговый дом "Комплексный"'

    result = load(store, dirs, folder / "offers.xml")
    # offers.xml is full (СодержитТолькоИзменения="false") and lists 2 of the 4 variants
    assert result.kind == "offers" and result.counts["removed_offers"] == 2
    assert rows(store, "SELECT count(*) n FROM offers WHERE removed=0")[0]["n"] == 2
    price = rows(store, "SELECT value FROM prices WHERE offer_id=? AND price_type_id=?",
                 "05e26d70-01e4-11dc-a411-00055d80a2d1#05e26d76-01e4-11dc-a411-00055d80a2d1",
                 "cbcf493b-55bc-11d9-848a-00112f43529a")
    assert price == [{"value": 700}]
    assert [(p["name"], p["currency"]) for p in rows(store, "SELECT * FROM price_types ORDER BY position")] == [
        ("Оптовая", "USD"), ("Закупочная", "USD"), ("Плановая", "USD"), ("Розничная", "руб")]


def test_a_feed_without_a_price_type_publishes_roubles_not_1cs_first_price_in_dollars(samples, store, dirs, tmp_path):
    """The official sample lists «Оптовая» in USD first: the table that costs 7 roubles must not sell at 5."""
    folder = samples / "1c-official-2.04"
    load(store, dirs, folder / "import.xml")
    load(store, dirs, folder / "offers.xml")
    store.close()
    feed = FeedSettings(name="cml", source="exchange", pictures="none")
    build_feed(Settings(data_dir=tmp_path / "data", feeds=(feed,)), feed, sync=False)
    table = etree.parse(str(tmp_path / "data" / "feeds" / "cml.xml")).find(
        ".//offer[@id='05e26d70-01e4-11dc-a411-00055d80a2d1#05e26d76-01e4-11dc-a411-00055d80a2d1']")
    assert table.findtext("price") == "7.00"


def test_ut10_sample_with_bom_package_ids_and_deleted_offers(samples, store, dirs):
    folder = samples / "1c-ut10.3-2.05"
    assert (folder / "offers.xml").read_bytes().startswith(b"\xef\xbb\xbf")
    # import.xml carries its goods as a ПакетПредложений (no Каталог); offers.xml's package has the id «pp_…»
    load(store, dirs, folder / "import.xml")
    load(store, dirs, folder / "offers.xml")
    assert rows(store, "SELECT count(*) n FROM categories")[0]["n"] == 4
    # six offers of offers.xml carry <Статус>Удален</Статус> (grep -c)
    assert rows(store, "SELECT count(*) n FROM offers WHERE archived=1")[0]["n"] == 6
    variant = rows(store, "SELECT * FROM offers WHERE id=?",
                   "235ccc6d-ab81-11e4-944a-00155d020201#a5abd77f-93f6-11e5-9468-00155d020201")[0]
    assert variant["kind"] == "variant" and variant["product_id"] == "235ccc6d-ab81-11e4-944a-00155d020201"
    values = {r["name"]: r["value"] for r in rows(store, "SELECT name, value FROM attributes WHERE owner_id=?", variant["id"])}
    assert values["Срок лицензии"] == "2 года"  # <Значение>2_YEAR</Значение> resolved through the classifier


def test_ut11_sample_namespace_and_stock_per_warehouse(samples, store, dirs):
    folder = samples / "1c-ut11-2.07"
    load(store, dirs, folder / "import0_1.xml")
    load(store, dirs, folder / "offers0_1.xml")
    good = "bd8c4e15-18f9-11e7-80c2-0cc47ab29cd1"
    card = rows(store, "SELECT * FROM products WHERE id=?", good)[0]
    assert card["article"] == "PM-421-WP" and card["unit_id"] == "796"
    offer = rows(store, "SELECT * FROM offers WHERE id=?", good)[0]
    assert json.loads(offer["barcodes"]) == [{"ean13": "8809288404089"}]
    stock = {r["warehouse_id"]: r["stock"] for r in rows(store, "SELECT * FROM stock WHERE offer_id=?", good)}
    # <Количество>377</Количество> plus three <Склад ИдСклада КоличествоНаСкладе>: only the latter are kept
    assert stock == {"6abdb0b5-18fd-11e7-80c2-0cc47ab29cd1": 1, "d2a52d49-19c9-11e7-80c2-0cc47ab29cd1": 0,
                     "dd306af1-19c9-11e7-80c2-0cc47ab29cd1": 376}
    assert {w["name"] for w in rows(store, "SELECT name FROM warehouses")} == {"Владивосток", "Новосибирск", "Москва"}
    attributes = {r["name"]: r["value"] for r in rows(store, "SELECT * FROM attributes WHERE owner_id=?", good)}
    assert attributes["Изготовитель"] == "Crazy Boom"


def test_ut11_a_good_with_the_status_attribute_deleted_is_off_sale(samples, store, dirs, tmp_path):
    """UT 11 writes <Товар Статус="Удален"> (an attribute in the 2.08-2.10 schemas): the good must not stay on sale."""
    folder = samples / "1c-ut11-2.07"
    load(store, dirs, folder / "import0_1.xml")
    load(store, dirs, folder / "offers0_1.xml")
    deleted = "b631c9c1-49de-11e9-80c9-0cc47ab29cd1"
    assert rows(store, "SELECT archived FROM products WHERE id=?", deleted) == [{"archived": 1}]
    assert rows(store, "SELECT count(*) n FROM products WHERE archived=1") == [{"n": 1}]  # «Новый», «Изменен» are on sale
    store.close()
    feed = FeedSettings(name="cml", source="exchange", pictures="none")
    build_feed(Settings(data_dir=tmp_path / "data", feeds=(feed,)), feed, sync=False)
    published = {o.get("id") for o in etree.parse(str(tmp_path / "data" / "feeds" / "cml.xml")).iter("offer")}
    # archived as of the file's date (2019): longer ago than inactive_days, so it has dropped out of the feed
    assert deleted not in published and "bd8c4e15-18f9-11e7-80c2-0cc47ab29cd1" in published
    # UT 11 names no short unit (Код="796 " НаименованиеПолное="Штука" МеждународноеСокращение="PCE"): the feed
    # said sym="PCE"; OKEI's «шт» is what the shop shows
    units = {etree.tostring(unit, encoding="unicode") for unit in etree.parse(str(tmp_path / "data" / "feeds" / "cml.xml")).iter("unit")}
    assert units == {'<unit code="pcs" name="Штука" sym="шт"/>'}


def test_a_service_stays_a_service_without_stock_when_its_offers_file_comes(samples, store, dirs, tmp_path):
    """ТипНоменклатуры «Услуга» (a delivery): published as type="service" with no quantity, as a MoySklad service is,
    not as a product forever out of stock; the offers file that follows (it cannot tell) does not undo it."""
    folder = samples / "django-cml-2.05"
    load(store, dirs, folder / "import.xml")
    delivery = "ac547501-714a-11d9-ac6c-0080482454f7"
    assert rows(store, "SELECT kind FROM offers WHERE id=?", delivery) == [{"kind": "service"}]
    assert rows(store, "SELECT kind FROM products WHERE id=?", delivery) == [{"kind": "service"}]
    offers = package(f"<Предложение><Ид>{delivery}</Ид><Наименование>Доставка до подъезда</Наименование>"
                     "<Цены><Цена><ИдТипаЦены>retail</ИдТипаЦены><ЦенаЗаЕдиницу>500</ЦенаЗаЕдиницу></Цена></Цены>"
                     "</Предложение>", changes_only=True)
    load(store, dirs, write(dirs, "offers.xml", offers))
    assert rows(store, "SELECT kind FROM offers WHERE id=?", delivery) == [{"kind": "service"}]
    assert rows(store, "SELECT count(*) n FROM offers WHERE kind='service'") == [{"n": 19}]  # the file types 19 of its 282 goods «Услуга»
    store.close()
    feed = FeedSettings(name="cml", source="exchange", pictures="none", price_type="Розничная")
    build_feed(Settings(data_dir=tmp_path / "data", feeds=(feed,)), feed, sync=False)
    document = etree.parse(str(tmp_path / "data" / "feeds" / "cml.xml"))
    offer = document.find(f".//offer[@id='{delivery}']")
    assert offer.get("type") == "service" and offer.get("quantity") is None and offer.findtext("price") == "500.00"

    with open_catalog(tmp_path / "data" / "catalog.sqlite") as again:  # a full catalog without it takes it away
        service = "<ЗначенияРеквизитов><ЗначениеРеквизита><Наименование>ТипНоменклатуры</Наименование>" \
                  "<Значение>Услуга</Значение></ЗначениеРеквизита></ЗначенияРеквизитов>"
        load(again, dirs, write(dirs, "import.xml", catalog([("install", "Установка")], extra=service)))
        assert rows(again, "SELECT id, kind FROM offers WHERE removed=0") == [{"id": "install", "kind": "service"}]


def test_ut10_a_characteristics_own_property_values_reach_the_feed(samples, store, dirs, tmp_path):
    """UT 10.3 tells a license's variants apart only by their own ЗначенияСвойств («Срок лицензии»): a param mapped
    from it must come from the variant, not only from its product."""
    folder = samples / "1c-ut10.3-2.05"
    load(store, dirs, folder / "import.xml")
    load(store, dirs, folder / "offers.xml")
    variant = "235ccc6d-ab81-11e4-944a-00155d020201#a5abd77f-93f6-11e5-9468-00155d020201"
    assert rows(store, "SELECT value FROM attributes WHERE owner_id=? AND name='Срок лицензии'", variant) == [{"value": "2 года"}]
    store.close()
    feed = FeedSettings(name="cml", source="exchange", pictures="none", params=(ParamMapping(attribute="Срок лицензии"),))
    build_feed(Settings(data_dir=tmp_path / "data", feeds=(feed,)), feed, sync=False)
    offer = etree.parse(str(tmp_path / "data" / "feeds" / "cml.xml")).find(f".//offer[@id='{variant}']")
    assert [(param.get("name"), param.text) for param in offer.iter("param")] == [("Срок лицензии", "2 года")]


def test_a_changes_package_updates_prices_and_stock_and_takes_nothing_away(samples, store, dirs):
    """ИзмененияПакетаПредложений (2.08-2.10 schemas, 1C's quick update): an offer by Ид and ИдХарактеристики, stock as
    <Склады ИдСклада КоличествоНаСкладе/>; what it does not list stays as it was."""
    folder = samples / "1c-ut11-2.07"
    load(store, dirs, folder / "import0_1.xml")
    load(store, dirs, folder / "offers0_1.xml")
    good, warehouse = "008b1914-6635-11e9-80c9-0cc47ab29cd1", "dd306af1-19c9-11e7-80c2-0cc47ab29cd1"
    price_type = rows(store, "SELECT price_type_id FROM prices WHERE offer_id=?", good)[0]["price_type_id"]
    live = rows(store, "SELECT count(*) n FROM offers WHERE removed=0")
    changes = document(f"<ИзмененияПакетаПредложений><Ид>c#</Ид><ИдКаталога>c</ИдКаталога><Предложения>"
                       f"<Предложение><Ид>{good}</Ид><Склады ИдСклада='{warehouse}' КоличествоНаСкладе='7'/>"
                       f"<Цены><Цена><ИдТипаЦены>{price_type}</ИдТипаЦены><ЦенаЗаЕдиницу>150</ЦенаЗаЕдиницу></Цена></Цены>"
                       f"</Предложение><Предложение><Ид>{good}</Ид><ИдХарактеристики>red</ИдХарактеристики>"
                       f"<Склады ИдСклада='{warehouse}' КоличествоНаСкладе='2'/></Предложение>"
                       "</Предложения></ИзмененияПакетаПредложений>").replace('ВерсияСхемы="2.07"', 'ВерсияСхемы="2.08"')
    result = load(store, dirs, write(dirs, "changes.xml", changes))
    assert result.counts["offers"] == 2 and not result.counts.get("removed_offers")
    assert rows(store, "SELECT value FROM prices WHERE offer_id=?", good) == [{"value": 15000}]
    assert rows(store, "SELECT offer_id, warehouse_id, stock FROM stock WHERE offer_id LIKE ? ORDER BY offer_id", good + "%") == [
        {"offer_id": good, "warehouse_id": warehouse, "stock": 7.0},
        {"offer_id": f"{good}#red", "warehouse_id": warehouse, "stock": 2.0}]
    assert rows(store, "SELECT count(*) n FROM offers WHERE removed=0") == live


def test_ut11_nested_groups_keep_their_parents(samples, store, dirs):
    load(store, dirs, samples / "1c-ut11-2.07" / "import0_1_with_nested_groups.xml")
    categories = rows(store, "SELECT * FROM categories")
    roots = [c for c in categories if c["parent_id"] is None]
    assert len(categories) == 13 and len(roots) == 2
    assert all(c["parent_id"] in {r["id"] for r in roots} for c in categories if c["parent_id"])


def test_2_09_split_exchange_changes_only(samples, store, dirs):
    folder = samples / "1c-2.09-multifile"
    kinds = [load(store, dirs, folder / name) for name in SAMPLE_SETS["1c-2.09-multifile"]]
    assert [r.kind for r in kinds] == ["import", "offers", "offers", "prices", "rests"]
    assert all(not key.startswith("removed_") for r in kinds for key in r.counts)  # СодержитТолькоИзменения="true"
    counts = store.counts("exchange")
    assert (counts["offers"], counts["prices"], counts["stock"], counts["warehouses"], counts["price_types"]) == (978, 978, 978, 1, 1)
    offer = "26b0dc1e-4d66-11e4-99fe-003048c64779"
    assert rows(store, "SELECT value FROM prices WHERE offer_id=?", offer) == [{"value": 18100}]
    assert rows(store, "SELECT warehouse_id, stock FROM stock WHERE offer_id=?", offer) == [
        {"warehouse_id": "5d1caeb1-44b2-11e4-a628-003048c64779", "stock": 1}]


def test_property_values_of_goods_sent_after_their_classifier_are_kept(samples, store, dirs):
    """1C 2.08+ sends the classifier (Свойства with their Справочник values) in a file of its own; the goods of a later
    file, even of a later exchange, name its properties and values by id: «Тип лампы» = «Светодиодные», not nothing."""
    folder = samples / "1c-2.09-multifile"
    load(store, dirs, folder / SAMPLE_SETS["1c-2.09-multifile"][0])
    lamp = ('<Товар><Ид>26b0dc1e-4d66-11e4-99fe-003048c64779</Ид><Наименование>Лампа</Наименование><ЗначенияСвойств>'
            '<ЗначенияСвойства><Ид>3057f488-6bd7-11e4-86dd-003048c64779</Ид>'
            '<Значение>6ee45a18-6bd7-11e4-86dd-003048c64779</Значение></ЗначенияСвойства></ЗначенияСвойств></Товар>')
    goods = document(f'<Каталог СодержитТолькоИзменения="true"><Ид>c</Ид><Товары>{lamp}</Товары></Каталог>')
    for _exchange in range(2):
        result = load(store, dirs, write(dirs, "goods.xml", goods))
        assert not result.counts.get("unknown_property_values")
        assert rows(store, "SELECT name, value FROM attributes WHERE type='property'") == [
            {"name": "Тип лампы", "value": "Светодиодные"}]
    renamed = catalog([]).replace("</Группы></Классификатор>", "</Группы><Свойства><Свойство>"
                                  "<Ид>3057f488-6bd7-11e4-86dd-003048c64779</Ид><Наименование>Лампа: тип</Наименование>"
                                  "</Свойство></Свойства></Классификатор>").replace("СодержитТолькоИзменения=\"false\"",
                                                                                     "СодержитТолькоИзменения=\"true\"")
    load(store, dirs, write(dirs, "classifier.xml", renamed))  # a later classifier's name wins; its values add up
    load(store, dirs, write(dirs, "goods.xml", goods))
    assert rows(store, "SELECT name, value FROM attributes WHERE type='property'") == [
        {"name": "Лампа: тип", "value": "Светодиодные"}]


def test_bare_classifier_fragment_is_refused(samples, store, dirs):
    """bigperson's classifier.xml has no КоммерческаяИнформация root: 1C never sends that, so it is refused."""
    folder = samples / "bigperson-2.08-ns210"
    load(store, dirs, folder / "import.xml")
    before = dump(store)
    with pytest.raises(CommerceMLError, match="не документ CommerceML"):
        load(store, dirs, folder / "classifier.xml")
    assert dump(store) == before


def test_orders_are_not_a_catalog(samples, store, dirs):
    with pytest.raises(CommerceMLError, match="не файл каталога"):
        load(store, dirs, samples / "1c-official-2.04" / "orders.xml")


def picture_files(folder: Path, upload: Path) -> list[str]:
    """Put a tiny JPEG wherever the sample's goods point their <Картинка>."""
    pictures = [p.text for p in etree.parse(str(folder / "import.xml")).iter("{*}Картинка") if p.text]
    for relative in pictures:
        (upload / relative).parent.mkdir(parents=True, exist_ok=True)
        (upload / relative).write_bytes(TINY_JPEG)
    return pictures


def test_umi_pictures_are_copied_and_recorded(samples, store, dirs):
    folder = samples / "umi-cms-2.04"
    pictures = picture_files(folder, dirs[0])
    result = load(store, dirs, folder / "import.xml")
    assert result.counts["images"] == len(pictures) == 3
    for relative in pictures:
        image_id = str(uuid.uuid5(uuid.NAMESPACE_URL, relative))
        cached = rows(store, "SELECT * FROM image_cache WHERE image_id=?", image_id)[0]
        assert cached["source"] == "exchange" and cached["local_file"] == f"{image_id}.jpg"
        assert (dirs[1] / f"{image_id}.jpg").read_bytes() == TINY_JPEG
        image = rows(store, "SELECT * FROM images WHERE href=?", f"exchange:/download/{image_id}")[0]
        assert image["position"] == 0 and image["owner_id"] == cached["owner_id"]


def test_feed_from_an_exchange_catalog(samples, store, dirs, tmp_path):
    folder = samples / "umi-cms-2.04"
    picture_files(folder, dirs[0])
    load(store, dirs, folder / "import.xml")
    load(store, dirs, folder / "offers.xml")
    feed = FeedSettings(name="cml", source="exchange", pictures="cache", min_ratio=0)
    settings = Settings(data_dir=tmp_path / "data", feeds=(feed,), public_url="https://shop.example")
    result = build_feed(settings, feed, sync=False)
    document = etree.parse(str(tmp_path / "data" / "feeds" / "cml.xml"))
    offers = {o.get("id"): o for o in document.iterfind(".//offer")}
    assert result.offers == len(offers) == 14
    combine = offers["bd72d927-55bc-11d9-848a-00112f43529a"]
    assert combine.findtext("name") == "Комбайн кухонный BINATONE FP 67"
    assert combine.findtext("price") == "4293.00"  # the first price type of offers.xml
    source = etree.parse(str(folder / "offers.xml")).find(".//{*}Предложение[{*}Ид='bd72d927-55bc-11d9-848a-00112f43529a']")
    assert float(combine.get("quantity")) == max(float(source.findtext("{*}Количество")), 0)
    assert combine.findtext("picture").startswith("https://shop.example/images/")
    assert combine.findtext("vatRate") == "18" and combine.find("unit").get("code") == "pcs"
    assert combine.findtext("categoryId") == "bd72d925-55bc-11d9-848a-00112f43529a"
    assert document.find(".//categories/category[@id='bd72d925-55bc-11d9-848a-00112f43529a']") is not None


# --- written here: full vs changes, failures, hostile files --------------------------------------------

def document(body: str, encoding: str = "UTF-8") -> str:
    return (f'<?xml version="1.0" encoding="{encoding}"?>\n<КоммерческаяИнформация xmlns="urn:1C.ru:commerceml_2" '
            f'ВерсияСхемы="2.07" ДатаФормирования="2024-05-01T10:00:00">{body}</КоммерческаяИнформация>')


def catalog(goods: list[tuple[str, str]], changes_only: bool = False, extra: str = "") -> str:
    items = "".join(f"<Товар><Ид>{i}</Ид><Наименование>{n}</Наименование>{extra}</Товар>" for i, n in goods)
    return document('<Классификатор><Ид>c</Ид><Наименование>К</Наименование><Группы><Группа><Ид>g1</Ид>'
                    '<Наименование>Посуда</Наименование></Группа></Группы></Классификатор>'
                    f'<Каталог СодержитТолькоИзменения="{str(changes_only).lower()}"><Ид>c</Ид><Товары>{items}</Товары></Каталог>')


def package(offers: str, changes_only: bool = False) -> str:
    return document(f'<ПакетПредложений СодержитТолькоИзменения="{str(changes_only).lower()}"><Ид>c#</Ид>'
                    '<ТипыЦен><ТипЦены><Ид>retail</Ид><Наименование>Розничная</Наименование></ТипЦены></ТипыЦен>'
                    f'<Предложения>{offers}</Предложения></ПакетПредложений>')


def test_a_weight_written_as_an_element_of_the_good_is_kept(store, dirs):
    """Some 2.10 exports write <Вес> on the Товар itself, not as the «Вес» requisite: it was dropped."""
    load(store, dirs, write(dirs, "import.xml", catalog([("kettle", "Чайник")], extra="<Вес>1,5</Вес>")))
    assert rows(store, "SELECT weight FROM products WHERE id = 'kettle'") == [{"weight": 1.5}]


def test_barcodes_spelt_shtrikhkod_with_a_capital_k_are_kept(store, dirs):
    """Some exchange modules write <ШтрихКод> for the schema's <Штрихкод>, on goods and on offers: it was dropped."""
    load(store, dirs, write(dirs, "import.xml", catalog([("kettle", "Чайник")], extra="<ШтрихКод>4600000000011</ШтрихКод>")))
    load(store, dirs, write(dirs, "offers.xml", package(
        "<Предложение><Ид>kettle#red</Ид><Наименование>Чайник красный</Наименование>"
        "<ШтрихКод>CODE-7</ШтрихКод></Предложение>")))
    barcodes = {r["id"]: json.loads(r["barcodes"]) for r in rows(store, "SELECT id, barcodes FROM offers")}
    assert barcodes == {"kettle": [{"ean13": "4600000000011"}], "kettle#red": [{"code128": "CODE-7"}]}


def write(dirs, name: str, text: str, encoding: str = "utf-8") -> Path:
    path = dirs[0] / name
    path.write_bytes(text.encode(encoding))
    return path


def live_ids(store, table="offers"):
    return {r["id"] for r in rows(store, f"SELECT id FROM {table} WHERE removed=0")}


def test_a_full_file_removes_what_it_lacks_a_changes_file_only_updates(store, dirs):
    load(store, dirs, write(dirs, "import.xml", catalog([("a", "Чайник"), ("b", "Кружка")])))
    result = load(store, dirs, write(dirs, "import.xml", catalog([("a", "Чайник")])))
    assert result.counts["removed_products"] == 1 and live_ids(store, "products") == {"a"}
    assert rows(store, "SELECT removed, removed_at IS NOT NULL r FROM products WHERE id='b'") == [{"removed": 1, "r": 1}]
    load(store, dirs, write(dirs, "import.xml", catalog([("c", "Ложка")], changes_only=True)))
    assert live_ids(store, "products") == {"a", "c"}

    variants = "".join(f"<Предложение><Ид>a#{n}</Ид><Наименование>Чайник {n}</Наименование>"
                       f"<ХарактеристикиТовара><ХарактеристикаТовара><Наименование>Цвет</Наименование>"
                       f"<Значение>{n}</Значение></ХарактеристикаТовара></ХарактеристикиТовара></Предложение>"
                       for n in ("красный", "синий"))
    load(store, dirs, write(dirs, "offers.xml", package(variants)))
    assert live_ids(store) == {"a", "c", "a#красный", "a#синий"}
    load(store, dirs, write(dirs, "offers.xml", package(variants.split("</Предложение>")[0] + "</Предложение>")))
    assert live_ids(store) == {"a", "c", "a#красный"}  # base offers belong to import files, never removed here
    load(store, dirs, write(dirs, "offers.xml", package("", changes_only=True)))
    assert live_ids(store) == {"a", "c", "a#красный"}


def test_deletion_marks_archive_and_malformed_items_are_skipped(store, dirs):
    body = catalog([("a", "Чайник")], extra="<ПометкаУдаления>true</ПометкаУдаления>")
    body = body.replace("</Товары>", "<Товар><Наименование>Без Ид</Наименование></Товар><Товар><Ид>x</Ид></Товар></Товары>")
    result = load(store, dirs, write(dirs, "import.xml", body))
    assert rows(store, "SELECT archived FROM products WHERE id='a'") == [{"archived": 1}]
    assert result.counts["skipped"] == 2
    reasons = {s["reason"] for s in store.skipped_items(result.run_id)}
    assert reasons == {"у товара нет Ид", "у товара нет наименования"}

    offers = ("<Предложение><Ид>a</Ид><Цены><Цена><ИдТипаЦены>retail</ИдТипаЦены><ЦенаЗаЕдиницу>1 234,50</ЦенаЗаЕдиницу>"
              "</Цена></Цены></Предложение><Предложение><Ид>b</Ид><Наименование>Кружка</Наименование><Цены><Цена>"
              "<ИдТипаЦены>retail</ИдТипаЦены><ЦенаЗаЕдиницу>дёшево</ЦенаЗаЕдиницу></Цена></Цены></Предложение>")
    result = load(store, dirs, write(dirs, "prices.xml", package(offers, changes_only=True)))
    assert result.kind == "prices"  # b, the one offer with a name, was skipped: what is left is prices only
    assert rows(store, "SELECT offer_id, value FROM prices") == [{"offer_id": "a", "value": 123450}]
    assert [s["reason"] for s in store.skipped_items(result.run_id)] == ["цена «дёшево» не число"]


def test_a_broken_file_changes_nothing(store, dirs):
    load(store, dirs, write(dirs, "import.xml", catalog([("a", "Чайник")])))
    before = dump(store)
    text = catalog([(f"n{i}", f"Товар {i}") for i in range(3000)])  # more than one batch is written before the break
    with pytest.raises(CommerceMLError, match=r"^Файл import\.xml: XML повреждён в строке \d+"):
        load(store, dirs, write(dirs, "import.xml", text[: len(text) - 200]))
    assert dump(store) == before
    assert store.last_run("exchange", "import")["status"] == "failed"


def test_windows_1251_file(store, dirs):
    path = write(dirs, "import.xml", catalog([("a", "Чайник «Ёлка»")]).replace("UTF-8", "windows-1251"), "cp1251")
    load(store, dirs, path)
    assert rows(store, "SELECT name FROM products") == [{"name": "Чайник «Ёлка»"}]
    assert rows(store, "SELECT name FROM categories") == [{"name": "Посуда"}]


@pytest.mark.parametrize("padding", ["", "<!--" + "x" * 70_000 + "-->"], ids=["doctype", "doctype-after-64k"])
def test_external_entities_are_refused_and_never_read(store, dirs, tmp_path, padding):
    secret = tmp_path / "secret.txt"
    secret.write_text("MARKER-7d1f")
    xxe = catalog([("a", "&xxe;")]).replace(
        "?>\n", f'?>\n{padding}<!DOCTYPE КоммерческаяИнформация [<!ENTITY xxe SYSTEM "file://{secret}">]>\n')
    with pytest.raises(CommerceMLError, match="DOCTYPE"):
        load(store, dirs, write(dirs, "import.xml", xxe))
    assert "MARKER-7d1f" not in repr(dump(store)) + repr(store.recent_runs())


def test_billion_laughs_is_refused_at_once(store, dirs):
    entities = '<!ENTITY a "aaaaaaaaaa">' + "".join(
        f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(9))
    bomb = catalog([("a", "&j;")]).replace("?>\n", f"?>\n<!DOCTYPE КоммерческаяИнформация [{entities}]>\n")
    started = time.monotonic()
    with pytest.raises(CommerceMLError, match="DOCTYPE"):
        load(store, dirs, write(dirs, "import.xml", bomb))
    assert time.monotonic() - started < 2 and not live_ids(store)


def test_pictures_outside_the_upload_or_not_pictures_are_skipped(store, dirs, tmp_path):
    (tmp_path / "outside.jpg").write_bytes(TINY_JPEG)
    (dirs[0] / "import_files").mkdir()
    (dirs[0] / "import_files" / "fake.jpg").write_bytes(b"<?php echo 1; ?>")
    extra = "<Картинка>../outside.jpg</Картинка><Картинка>import_files/fake.jpg</Картинка><Картинка>import_files/gone.png</Картинка>"
    result = load(store, dirs, write(dirs, "import.xml", catalog([("a", "Чайник")], extra=extra)))
    assert result.counts["images"] == 0
    assert not dirs[1].exists() or not any(dirs[1].iterdir())
    assert sorted(s["reason"] for s in store.skipped_items(result.run_id)) == [
        "картинка не в формате JPEG или PNG", "путь картинки ведёт за пределы папки обмена", "файл картинки не был загружен"]


def test_a_picture_larger_than_retailcrm_takes_is_skipped_with_its_size(store, dirs):
    """retailCRM takes a picture of at most 2 MB (core.pictures): one byte more is left out, and the operator is told."""
    (dirs[0] / "import_files").mkdir()
    (dirs[0] / "import_files" / "limit.jpg").write_bytes(TINY_JPEG[:3] + bytes(MAX_PICTURE_BYTES - 3))
    (dirs[0] / "import_files" / "over.jpg").write_bytes(TINY_JPEG[:3] + bytes(MAX_PICTURE_BYTES - 2))
    extra = "<Картинка>import_files/limit.jpg</Картинка><Картинка>import_files/over.jpg</Картинка>"
    result = load(store, dirs, write(dirs, "import.xml", catalog([("a", "Чайник")], extra=extra)))
    assert [r["filename"] for r in rows(store, "SELECT filename FROM images")] == ["limit.jpg"]
    assert [s["reason"] for s in store.skipped_items(result.run_id)] == [
        f"картинка больше 2 МБ ({MAX_PICTURE_BYTES + 1} байт)"]


def test_a_picture_several_goods_share_is_served_once_and_imports_again(store, dirs):
    """Goods (variants, say) that name the same picture file, and the same upload imported twice: one served
    file, a hard link to the upload, and nothing left behind in the images folder."""
    (dirs[0] / "import_files").mkdir()
    (dirs[0] / "import_files" / "shared.jpg").write_bytes(TINY_JPEG)
    path = write(dirs, "import.xml", catalog([("a", "Чайник"), ("b", "Кружка"), ("c", "Блюдце")],
                                             extra="<Картинка>import_files/shared.jpg</Картинка>"))
    for _ in range(2):
        result = load(store, dirs, path)
        assert result.counts["images"] == 3 and not store.skipped_items(result.run_id)
    image_id = str(uuid.uuid5(uuid.NAMESPACE_URL, "import_files/shared.jpg"))
    assert sorted(p.name for p in dirs[1].iterdir()) == [f"{image_id}.jpg"]
    assert (dirs[1] / f"{image_id}.jpg").samefile(dirs[0] / "import_files" / "shared.jpg")
    assert [r["owner_id"] for r in rows(store, "SELECT owner_id FROM images ORDER BY owner_id")] == ["a", "b", "c"]


def test_the_picture_served_is_the_file_that_was_checked(store, dirs, monkeypatch):
    """An upload replaced under its name while the import checks it (1C sending the name again meanwhile): the
    images folder gets the file that passed the check, never the unchecked newcomer."""
    from core.pictures import picture_kind

    (dirs[0] / "import_files").mkdir()
    upload = dirs[0] / "import_files" / "kettle.jpg"
    upload.write_bytes(TINY_JPEG)

    def replaced_while_checked(head):
        newcomer = upload.with_name("newcomer")
        newcomer.write_bytes(b"<html><script>alert(1)</script>")
        os.replace(newcomer, upload)
        return picture_kind(head)

    monkeypatch.setattr("exchange.catalog_import.picture_kind", replaced_while_checked)
    extra = "<Картинка>import_files/kettle.jpg</Картинка>"
    load(store, dirs, write(dirs, "import.xml", catalog([("a", "Чайник")], extra=extra)))
    image_id = str(uuid.uuid5(uuid.NAMESPACE_URL, "import_files/kettle.jpg"))
    assert (dirs[1] / f"{image_id}.jpg").read_bytes() == TINY_JPEG


def test_deactivate_archives_what_the_session_did_not_touch(store, dirs, monkeypatch):
    """The session is its own imports (their store runs), not a time: an earlier session's import in the
    same second as this session's start must not count as this session's."""
    monkeypatch.setattr("store.runs.utc_now", lambda: "2024-05-01T10:00:00+00:00")  # every run in one second
    load(store, dirs, write(dirs, "import.xml", catalog([("a", "Чайник"), ("b", "Кружка")])))  # an earlier session
    assert deactivate_untouched(store, []) == {"products": 0, "offers": 0}  # this one has imported nothing yet
    this_session = [load(store, dirs, write(dirs, "import.xml", catalog([("a", "Чайник")], changes_only=True))).run_id]
    assert deactivate_untouched(store, this_session) == {"products": 1, "offers": 1}
    state = rows(store, "SELECT id, archived, removed FROM products ORDER BY id")
    assert state == [{"id": "a", "archived": 0, "removed": 0}, {"id": "b", "archived": 1, "removed": 0}]


def test_deactivate_keeps_cards_that_only_offers_files_name(store, dirs):
    """1C 2.09 may send goods only as offers: their made-up cards count as touched by the offers file."""
    offers = package("<Предложение><Ид>p1</Ид><Наименование>Мыло</Наименование></Предложение>", changes_only=True)
    load(store, dirs, write(dirs, "offers.xml", offers))
    this_session = [load(store, dirs, write(dirs, "offers.xml", offers)).run_id]
    assert deactivate_untouched(store, this_session) == {"products": 0, "offers": 0}


def test_goods_only_offers_describe_come_back_and_follow_their_offers(samples, store, dirs):
    """umi's import.xml describes 3 of the 14 goods its offers.xml sells. The next day's full import.xml removes the
    other 11 cards again; that day's offers.xml must bring them back, or they sell as «not on sale» and drop out."""
    folder = samples / "umi-cms-2.04"
    for _day in (1, 2):
        session = [load(store, dirs, folder / "import.xml").run_id]
        session.append(load(store, dirs, folder / "offers.xml").run_id)
    assert rows(store, "SELECT count(*) n FROM products WHERE removed=1 OR archived=1") == [{"n": 0}]
    assert rows(store, "SELECT count(*) n FROM products WHERE from_offer=1") == [{"n": 11}]
    assert deactivate_untouched(store, session) == {"products": 0, "offers": 0}

    # a card made up from offers follows its base offer's name and group; a Товар's card follows its Товар
    offers = package("<Предложение><Ид>p1</Ид><Наименование>Мыло</Наименование><Группы><Ид>g1</Ид></Группы></Предложение>")
    load(store, dirs, write(dirs, "offers.xml", offers))
    load(store, dirs, write(dirs, "offers.xml", offers.replace("Мыло", "Мыло детское").replace("g1", "g2")))
    assert rows(store, "SELECT name, category_id FROM products WHERE id='p1'") == [{"name": "Мыло детское", "category_id": "g2"}]
    load(store, dirs, write(dirs, "import.xml", catalog([("p1", "Мыло хозяйственное")], changes_only=True)))
    load(store, dirs, write(dirs, "offers.xml", offers))
    assert rows(store, "SELECT name, from_offer FROM products WHERE id='p1'") == [{"name": "Мыло хозяйственное", "from_offer": 0}]


def test_a_good_only_offers_describe_is_on_sale_again_after_a_deactivation(samples, store, dirs):
    """UT 10.3 sends its goods as offers only. Left out of one exchange (deactivate archived it), a good is sold
    again when the next exchange lists it."""
    folder = samples / "1c-ut10.3-2.05"
    good = "7d2dcab3-e453-11e6-9483-00155d020201"
    text = (folder / "import.xml").read_text(encoding="utf-8-sig")
    start = text.index(f"<Предложение>\n\t\t\t\t<Ид>{good}")
    without = write(dirs, "without.xml", text[:start] + text[text.index("</Предложение>", start) + len("</Предложение>"):])
    load(store, dirs, folder / "import.xml")
    assert deactivate_untouched(store, [load(store, dirs, without).run_id]) == {"products": 1, "offers": 1}
    load(store, dirs, folder / "import.xml")
    assert rows(store, "SELECT archived, removed FROM products WHERE id=?", good) == [{"archived": 0, "removed": 0}]
    assert rows(store, "SELECT archived, removed FROM offers WHERE id=?", good) == [{"archived": 0, "removed": 0}]


def test_progress_is_reported_every_thousand_records(store, dirs):
    """Every 1000 records written, then the total: 2500 goods and 1 group."""
    reported = []
    path = write(dirs, "import.xml", catalog([(f"n{i}", f"Товар {i}") for i in range(2500)]))
    import_file(store, path, upload_dir=dirs[0], images_dir=dirs[1], progress=reported.append)
    assert reported == [1000, 2000, 2501]


def parser_processes() -> list[int]:
    """Processes our fork server started: the parsers of running imports."""
    servers = [pid for pid in child_pids(os.getpid()) if b"forkserver" in command_line(pid)]
    return [parser for server in servers for parser in child_pids(server)]


def test_parser_process_killed_mid_import_changes_nothing(store, dirs):
    """The parser runs in its own process; if the OOM killer or an operator kills it, the file fails
    with a reason and nothing of it is saved, and the next import works."""
    load(store, dirs, write(dirs, "import.xml", catalog([("keep", "Старый товар")])))
    before = dump(store)
    path = write(dirs, "import.xml", catalog([(f"n{i}", f"Товар {i}") for i in range(300_000)]))
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(error=_import_error(store, dirs, path)))
    thread.start()
    deadline = time.monotonic() + 30
    while not parser_processes() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # well into the file: the first batches are already written in the open run
    for pid in parser_processes():
        os.kill(pid, signal.SIGKILL)
    thread.join(60)
    assert "процесс разбора файла неожиданно остановился" in outcome["error"]
    assert dump(store) == before
    assert load(store, dirs, write(dirs, "import.xml", catalog([("new", "Новый")]))).counts["goods"] == 1


def _import_error(store, dirs, path) -> str:
    try:
        load(store, dirs, path)
    except CommerceMLError as exc:
        return str(exc)
    return "imported without error"


@pytest.mark.parametrize("merged_every", [1, 20_000])  # records: every batch merged apart, or all together
def test_a_good_listed_twice_in_a_file_is_stored_as_its_last_copy(store, dirs, monkeypatch, merged_every):
    """The copies sit in different batches (a batch is 1000 records): the last copy's card, pictures and
    requisites replace the first's, whether the writer merges their batches into the store together or apart."""
    monkeypatch.setattr("exchange.catalog_import.GROUP_RECORDS", merged_every)
    (dirs[0] / "import_files").mkdir()
    for name in ("first.jpg", "last.jpg"):
        (dirs[0] / "import_files" / name).write_bytes(TINY_JPEG)

    def good(name: str, pictures: list[str], requisites: dict[str, str]) -> str:
        return (f"<Товар><Ид>a</Ид><Наименование>{name}</Наименование>"
                + "".join(f"<Картинка>import_files/{picture}</Картинка>" for picture in pictures)
                + "<ЗначенияРеквизитов>" + "".join(f"<ЗначениеРеквизита><Наименование>{key}</Наименование><Значение>"
                                                     f"{value}</Значение></ЗначениеРеквизита>" for key, value in requisites.items())
                + "</ЗначенияРеквизитов></Товар>")

    first = good("Первый", ["first.jpg", "last.jpg"], {"Цвет": "красный", "Размер": "XL"})
    others = "".join(f"<Товар><Ид>g{n}</Ид><Наименование>Товар {n}</Наименование></Товар>" for n in range(1500))
    last = good("Последний", ["last.jpg"], {"Цвет": "синий"})
    text = document(f'<Каталог СодержитТолькоИзменения="false"><Ид>c</Ид><Товары>{first}{others}{last}</Товары></Каталог>')
    result = load(store, dirs, write(dirs, "import.xml", text))
    assert result.counts["goods"] == 1502 and live_ids(store, "products") == {"a"} | {f"g{n}" for n in range(1500)}
    assert rows(store, "SELECT name FROM products WHERE id='a'") == [{"name": "Последний"}]
    assert rows(store, "SELECT position, filename FROM images WHERE owner_id='a'") == [{"position": 0, "filename": "last.jpg"}]
    assert rows(store, "SELECT name, value FROM attributes WHERE owner_id='a'") == [{"name": "Цвет", "value": "синий"}]


def test_what_the_sender_says_of_itself_on_the_root_is_kept_with_the_result(store, dirs, caplog):
    """No file MoySklad makes is public: its root attributes (СинхронизацияТоваров) are logged and kept."""
    text = catalog([("a", "Чайник")]).replace('ВерсияСхемы="2.07"', 'ВерсияСхемы="2.07" СинхронизацияТоваров="true"')
    with caplog.at_level("INFO", logger="exchange.catalog_import"):
        result = load(store, dirs, write(dirs, "import.xml", text))
    assert result.root_attributes == {"ВерсияСхемы": "2.07", "СинхронизацияТоваров": "true",
                                      "ДатаФормирования": "2024-05-01T10:00:00"}
    assert "СинхронизацияТоваров='true'" in caplog.text
