"""MoySklad rows → store records, on the vendor's own example responses."""

import json

import pytest

from moysklad.transform import (
    ATTRIBUTE_COLUMNS,
    IMAGE_COLUMNS,
    OFFER_COLUMNS,
    PRICE_COLUMNS,
    PRODUCT_COLUMNS,
    MalformedItem,
    bundle_component_records,
    category_record,
    component_record,
    id_from_href,
    price_type_records,
    stock_report_page,
)
from moysklad.transform import assortment_page as decode_assortment


def load(fixtures, name):
    return json.loads((fixtures / "moysklad" / name).read_text(encoding="utf-8"))


def list_page(rows, size=None) -> bytes:
    """A list answer as MoySklad sends it, around these rows."""
    return json.dumps({"meta": {"size": len(rows) if size is None else size}, "rows": rows}, ensure_ascii=False).encode()


class Records:
    """A decoded assortment page with its tuples as dicts by column name."""

    def __init__(self, rows):
        page = decode_assortment(list_page(rows))
        self.page = page
        self.offers = [dict(zip(OFFER_COLUMNS, offer)) for offer in page.offers]
        self.products = {p[0]: dict(zip(PRODUCT_COLUMNS, p)) for p in page.products}
        self.prices = [dict(zip(PRICE_COLUMNS, price)) for price in page.prices]
        self.attributes = [dict(zip(ATTRIBUTE_COLUMNS, attribute)) for attribute in page.attributes]
        self.reasons = [skipped.reason for skipped in page.skipped]


def test_assortment_rows_become_products_offers_and_prices(shared_fixtures):
    rows = load(shared_fixtures, "assortment_without_stock.json")["rows"]
    records = Records(rows)
    assert [o["kind"] for o in records.offers] == ["product", "service", "bundle", "product", "variant", "variant"]
    assert records.page.size == records.page.rows == len(rows) and not records.reasons

    offer = records.offers[0]
    product = records.products[offer["id"]]
    assert product["id"] == offer["id"] == offer["product_id"] == "35427052-36e7-11e7-8a7f-40d0000000d7"
    assert offer["external_code"] == "LsAGeHdbgyQ3oSlTzZUvH0"
    assert offer["buy_price"] == 500
    assert [p for p in records.prices if p["offer_id"] == offer["id"]] == [
        {"offer_id": offer["id"], "price_type_id": "672559f1-cbf3-11e1-9eb9-889ffa6f49fd", "value": 1500}]
    assert json.loads(offer["barcodes"]) == [{"ean13": "2000000000015"}]
    assert product["vat"] == 18 and product["vat_enabled"] == 1

    parent, blue = records.offers[3], records.offers[4]
    assert records.products[parent["id"]]["variants_count"] == 2
    assert blue["id"] not in records.products
    assert blue["product_id"] == parent["id"]
    assert json.loads(blue["characteristics"]) == [{"name": "color", "value": "blue"}]
    assert blue["external_code"] == "BrmW28jLhRMI-jOPUdfWW0"


def test_product_cards_carry_folder_unit_and_attributes(shared_fixtures):
    row = load(shared_fixtures, "product_get.json")
    records = Records([row])
    product = records.products[row["id"]]
    assert product["category_id"] is None  # the vendor example sits at the top level
    assert product["description"] == row["description"]
    assert product["unit_id"] == "19f1edc0-fc42-4001-94cb-c9ec9c62ec10"  # the id at the end of the uom link
    # the vendor example's one attribute, a boolean «Экспорт» = false: kept by id, with its type and value as text
    assert records.attributes == [{"owner_id": row["id"], "attribute_id": "0c2e54cd-2c80-11e6-8a84-bae50000009c",
                                   "name": "Экспорт", "type": "boolean", "value": "false"}]


def test_links_give_the_id_at_their_end():
    base = "https://api.moysklad.ru/api/remap/1.2/entity/product/"
    assert id_from_href(base + "c02e3a5c-007e-11e6-9464-e4de00000006?expand=supplier") == "c02e3a5c-007e-11e6-9464-e4de00000006"
    assert id_from_href(base + "abc/") == "abc"
    assert id_from_href("https://api.moysklad.ru") is None and id_from_href("https://api.moysklad.ru/") is None
    assert id_from_href("") is None and id_from_href(None) is None and id_from_href(42) is None


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda r: r.pop("name"), "has no name"),
        (lambda r: r["salePrices"][0].update(value="12,50"), "not a number"),
        (lambda r: r["salePrices"][0].update(value=-100.0), "negative"),
        (lambda r: r["meta"].update(type="consignment"), "unknown assortment type"),
        (lambda r: r.pop("id") and r["meta"].update(href=""), "has no id"),
        (lambda r: r.update(salePrices="free"), "salePrices is not a list (got a text)"),
        (lambda r: r["salePrices"].append("free"), "salePrices[1] is not an object (got a text)"),
    ],
)
def test_malformed_rows_are_refused_with_a_reason_and_the_others_kept(shared_fixtures, change, reason):
    rows = load(shared_fixtures, "assortment_without_stock.json")["rows"]
    change(rows[0])
    records = Records(rows)
    assert len(records.reasons) == 1 and reason in records.reasons[0]
    assert [o["id"] for o in records.offers] == [row["id"] for row in rows[1:]]
    assert records.page.rows == len(rows)


def test_a_variant_without_its_product_is_refused(shared_fixtures):
    row = load(shared_fixtures, "assortment_without_stock.json")["rows"][4]
    del row["product"]
    assert Records([row]).reasons == ["variant without a link to its product"]


def test_empty_names_are_kept_for_the_feed_to_judge(shared_fixtures):
    row = load(shared_fixtures, "assortment_without_stock.json")["rows"][0]
    row["name"] = ""
    assert Records([row]).offers[0]["name"] == ""


def test_stock_report_rows_give_cost_and_first_image(shared_fixtures):
    rows = load(shared_fixtures, "report_stock_all.json")["rows"]
    page = stock_report_page(list_page(rows))
    costs = {offer_id: cost for cost, offer_id in page.costs}
    assert "c02e3a5c-007e-11e6-9464-e4de00000006" in costs  # ?expand=... stripped
    stock = {id_from_href(row["meta"]["href"]): row["stock"] for row in rows}
    # with nothing in stock MoySklad reports a cost of 0: that is no cost (the feed then leaves purchasePrice out)
    assert {costs[i] for i in costs if stock[i] <= 0} == {None}
    assert {costs[i] for i in costs if stock[i] > 0} == {0, 50261}  # received at no cost; «Трололоша», in kopecks
    assert len(page.costs) == len(rows) and len(page.images) == 1
    image = dict(zip(IMAGE_COLUMNS, page.images[0]))
    assert image["owner_id"] == id_from_href(rows[-1]["meta"]["href"]) and image["position"] == 0
    assert image["filename"] == "image-product.jpg"
    assert image["href"].endswith("/download/d2bc700a-696c-4082-b807-be8cfff7d7a1")


def test_a_stock_report_image_retailcrm_would_refuse_keeps_no_cdn_link(shared_fixtures):
    row = load(shared_fixtures, "report_stock_all.json")["rows"][-1]
    row["image"]["meta"]["downloadPermanentHref"] = "https://cdn.moysklad.ru/x/image/e492d7db"
    links = {}
    for name, size in (("photo.PNG", 14052), ("photo.webp", 14052), ("photo.jpg", 7_500_000)):
        row["image"].update(filename=name, size=size)
        links[name] = dict(zip(IMAGE_COLUMNS, stock_report_page(list_page([row])).images[0]))["permanent_href"]
    assert links == {"photo.PNG": "https://cdn.moysklad.ru/x/image/e492d7db", "photo.webp": None, "photo.jpg": None}


def test_a_body_that_is_no_list_page_is_said_to_be_so():
    from moysklad.transform import NotAListAnswer

    with pytest.raises(NotAListAnswer):
        decode_assortment(b'{"errors": []}')


def test_folders_link_their_parent(shared_fixtures):
    top, child = load(shared_fixtures, "productfolder_list.json")["rows"][:2]
    child["productFolder"] = {"meta": dict(top["meta"])}  # the examples omit the link at the top level
    assert category_record(top)["parent_id"] is None
    record = category_record(child)
    assert record["parent_id"] == top["id"]
    assert record["name"] == child["name"]


def test_price_types_keep_their_order(shared_fixtures):
    settings = load(shared_fixtures, "companysettings_get.json")
    records = price_type_records(settings)
    assert [r["name"] for r in records] == ["Цена для друзей", "Цена для конкурентов"]
    assert [r["position"] for r in records] == [0, 1]


def test_errors_are_classified_once_with_words_a_person_can_act_on():
    from moysklad.errors import CredentialsRejected, PermissionMissing, RateLimited, RequestRejected, ServerFailure, classify

    body = '{"errors":[{"error":"Ошибка аутентификации","code":1056}]}'.encode()
    error = classify(401, body, {}, "/entity/assortment", "u")
    assert isinstance(error, CredentialsRejected) and not error.retriable
    assert str(error).startswith("MoySklad rejected the credentials: Ошибка аутентификации")

    error = classify(403, b"", {}, "/report/stock/all", "u")
    assert isinstance(error, PermissionMissing) and "Остатки → Просматривать" in str(error)

    error = classify(429, '{"errors":[{"error":"Превышено","code":1073}]}'.encode(), {"X-Lognex-Retry-After": "1500"}, "/x", "u")
    assert isinstance(error, RateLimited) and error.retriable and error.retry_after == 1.5
    assert "too many parallel requests" in str(error)
    error = classify(429, '{"errors":[{"error":"Превышено","code":1073}]}'.encode(), {"X-Lognex-Retry-TimeInterval": "3000"},
                     "/x", "u")
    assert error.retry_after == 1.0  # no time given for the parallel limit: another request ends soon, not a window

    assert isinstance(classify(502, b"<html>Bad gateway</html>", {}, "/x", "u"), ServerFailure)
    error = classify(412, b'{"errors":[{"error":"first"},{"error":"second","code":3000}]}', {}, "/x", "u")
    assert isinstance(error, RequestRejected) and not error.retriable
    assert "first; second" in str(error) and error.codes == (3000,)


def test_bundles_carry_tracking_type_and_their_components(shared_fixtures):
    bundle = load(shared_fixtures, "bundle_list.json")["rows"][0]
    assert Records([bundle]).products[bundle["id"]]["tracking_type"] == "NOT_TRACKED"
    assert bundle_component_records(bundle) == (bundle["id"], None)  # not expanded: to be asked for
    listed = load(shared_fixtures, "bundle_components.json")["rows"]
    expanded = dict(bundle, components={"meta": {"size": len(listed)}, "rows": listed})
    assert bundle_component_records(expanded) == (bundle["id"], [
        {"bundle_id": bundle["id"], "component_id": "b3d8d132-ee08-11e6-8af5-581e00000013", "quantity": 1.0},
        {"bundle_id": bundle["id"], "component_id": "b01e8dfd-ee08-11e6-8af5-581e00000005", "quantity": 1.0}])
    partial = dict(bundle, components={"meta": {"size": len(listed) + 1}, "rows": listed})
    assert bundle_component_records(partial) == (bundle["id"], None)  # more than came inline
    with pytest.raises(MalformedItem, match="no positive quantity"):
        component_record(bundle["id"], dict(listed[0], quantity=0))
