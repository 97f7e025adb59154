"""MoySklad rows → store records, on the vendor's own example responses."""

import json

import pytest

from moysklad.transform import (
    MalformedItem,
    assortment_records,
    bundle_component_records,
    category_record,
    component_record,
    id_from_href,
    price_type_records,
    stock_report_record,
)


def load(fixtures, name):
    return json.loads((fixtures / "moysklad" / name).read_text(encoding="utf-8"))


def test_assortment_rows_become_products_offers_and_prices(shared_fixtures):
    rows = load(shared_fixtures, "assortment_without_stock.json")["rows"]
    records = [assortment_records(row) for row in rows]
    kinds = [r.offer["kind"] for r in records]
    assert kinds == ["product", "service", "bundle", "product", "variant", "variant"]

    product = records[0]
    assert product.product["id"] == product.offer["id"] == product.offer["product_id"] == "35427052-36e7-11e7-8a7f-40d0000000d7"
    assert product.offer["external_code"] == "LsAGeHdbgyQ3oSlTzZUvH0"
    assert product.offer["buy_price"] == 500
    assert product.prices == [{"offer_id": product.offer["id"], "price_type_id": "672559f1-cbf3-11e1-9eb9-889ffa6f49fd", "value": 1500}]
    assert json.loads(product.offer["barcodes"]) == [{"ean13": "2000000000015"}]
    assert product.product["vat"] == 18 and product.product["vat_enabled"] == 1

    parent, blue = records[3], records[4]
    assert parent.product["variants_count"] == 2
    assert blue.product is None
    assert blue.offer["product_id"] == parent.product["id"]
    assert json.loads(blue.offer["characteristics"]) == [{"name": "color", "value": "blue"}]
    assert blue.offer["external_code"] == "BrmW28jLhRMI-jOPUdfWW0"


def test_product_cards_carry_folder_unit_and_attributes(shared_fixtures):
    row = load(shared_fixtures, "product_get.json")
    records = assortment_records(row)
    assert records.product["category_id"] is None  # the vendor example sits at the top level
    assert records.product["description"] == row["description"]
    assert records.product["unit_id"] == id_from_href(row["uom"]["meta"]["href"])
    names = {a["name"]: a["value"] for a in records.attributes}
    assert len(names) == len(row.get("attributes", []))


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda r: r.pop("name"), "has no name"),
        (lambda r: r["salePrices"][0].update(value="12,50"), "not a number"),
        (lambda r: r["salePrices"][0].update(value=-100.0), "negative"),
        (lambda r: r["meta"].update(type="consignment"), "unknown assortment type"),
        (lambda r: r.pop("id") and r["meta"].update(href=""), "has no id"),
        (lambda r: r.update(salePrices="free"), "salePrices is not a list"),
    ],
)
def test_malformed_rows_are_refused_with_a_reason(shared_fixtures, change, reason):
    row = load(shared_fixtures, "assortment_without_stock.json")["rows"][0]
    change(row)
    with pytest.raises(MalformedItem, match=reason):
        assortment_records(row)


def test_a_variant_without_its_product_is_refused(shared_fixtures):
    row = load(shared_fixtures, "assortment_without_stock.json")["rows"][4]
    del row["product"]
    with pytest.raises(MalformedItem, match="variant without a link"):
        assortment_records(row)


def test_empty_names_are_kept_for_the_feed_to_judge(shared_fixtures):
    row = load(shared_fixtures, "assortment_without_stock.json")["rows"][0]
    row["name"] = ""
    assert assortment_records(row).offer["name"] == ""


def test_stock_report_rows_give_cost_and_first_image(shared_fixtures):
    rows = load(shared_fixtures, "report_stock_all.json")["rows"]
    offer_id, cost, image = stock_report_record(rows[0])
    assert offer_id == "c02e3a5c-007e-11e6-9464-e4de00000006"  # ?expand=... stripped
    assert cost == 0 and image is None
    offer_id, cost, image = stock_report_record(rows[-1])
    assert image["filename"] == "image-product.jpg"
    assert image["href"].endswith("/download/d2bc700a-696c-4082-b807-be8cfff7d7a1")


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

    assert isinstance(classify(502, b"<html>Bad gateway</html>", {}, "/x", "u"), ServerFailure)
    error = classify(412, b'{"errors":[{"error":"first"},{"error":"second","code":3000}]}', {}, "/x", "u")
    assert isinstance(error, RequestRejected) and not error.retriable
    assert "first; second" in str(error) and error.codes == (3000,)


def test_bundles_carry_tracking_type_and_their_components(shared_fixtures):
    bundle = load(shared_fixtures, "bundle_list.json")["rows"][0]
    assert assortment_records(bundle).product["tracking_type"] == "NOT_TRACKED"
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
