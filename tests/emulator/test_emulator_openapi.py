"""Emulator responses validated against the vendor's OpenAPI 3.0.3 description of JSON API 1.2."""

import json
import time

import pytest
import requests
from openapi_schema_validator import OAS30Validator, oas30_format_checker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from emulator import EmulatorServer, generate_catalog
from emulator.harness import SHARED  # noqa: E402
from tests.emulator.test_emulator_webhooks import Receiver

SPEC_PATH = SHARED / "specs" / "moysklad-openapi-1.2.json"
FIXTURES = SHARED / "fixtures" / "moysklad"
SPEC_URI = "urn:moysklad-openapi-1.2"
AUTH = {"Authorization": "Bearer emu-token", "Accept-Encoding": "gzip"}
ATTRIBUTE_SCHEMAS: dict[str, str] = {}  # attribute type -> schema name, from the spec's discriminator
ENTITY_SCHEMAS = {"product": "Product", "variant": "Variant", "service": "Service", "bundle": "Bundle"}

pytestmark = pytest.mark.skipif(not SPEC_PATH.exists(), reason="shared/specs/moysklad-openapi-1.2.json is absent")


@pytest.fixture(scope="module")
def registry():
    """The whole spec as one resource, so every "#/components/..." ref resolves.

    AttributeAbstract's discriminator maps to schemas that allOf AttributeAbstract again, which
    recurses forever in the validator; it is dropped here and attributes are checked per type
    against the mapped schema in validate() instead. AssortmentWithoutBundle (a bundle component's
    good) is a oneOf of Product/Service/Variant/Consignment that any meta-only object matches more
    than once; it is opened up here and the good is checked against the schema its meta.type names.
    """
    spec = json.loads(SPEC_PATH.read_text(encoding="utf-8"))
    attribute = spec["components"]["schemas"]["AttributeAbstract"]
    ATTRIBUTE_SCHEMAS.update({kind: ref.rsplit("/", 1)[-1]
                              for kind, ref in attribute.pop("discriminator")["mapping"].items()})
    spec["components"]["x-bundled"]["components_schemas_common_assortmentWithoutBundle.yaml"] = {"type": "object"}
    return Registry().with_resource(SPEC_URI, Resource.from_contents(spec, default_specification=DRAFT4))


@pytest.fixture(scope="module")
def server():
    srv = EmulatorServer(generate_catalog(products=200, seed=11), webhook_interval=0.2).start()
    yield srv
    srv.stop()


def validate(registry, schema_name, instance):
    """Raise on the first spec violation of `instance` against components/schemas/<schema_name>."""
    schema = {"$ref": f"{SPEC_URI}#/components/schemas/{schema_name}"}
    validator = OAS30Validator(schema, registry=registry, format_checker=oas30_format_checker)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    assert not errors, f"{schema_name}: {errors[0].message} at {list(errors[0].absolute_path)}"
    rows = instance.get("rows") or [instance] if isinstance(instance, dict) else []
    for row in rows:
        for attribute in row.get("attributes") or ():
            validate(registry, ATTRIBUTE_SCHEMAS[attribute["type"]], attribute)
        components = row.get("components") or {}
        for component in components.get("rows") or [row] * ("assortment" in row):
            good = component["assortment"]
            validate(registry, ENTITY_SCHEMAS[good["meta"]["type"]], good)


def patiently(method: str, url: str, **kwargs) -> requests.Response:
    """A request that waits out 429s: every request costs 4 of the shared server's 45 units per 3 s (a stock report 5)."""
    for _ in range(20):
        response = requests.request(method, url, **kwargs)
        if response.status_code != 429:
            break
        time.sleep(int(response.headers["X-Lognex-Retry-After"]) / 1000)
    return response


def fetch(server, path, headers=AUTH, **params):
    response = patiently("GET", server.base_url + path, headers=headers, params=params or None)
    assert response.status_code == 200, response.text[:300]
    return response.json()


@pytest.mark.parametrize("headers", [AUTH, {**AUTH, "X-Lognex-Remap-Beta-Feature": "assortmentWithoutStock"}],
                         ids=["legacy", "without-stock"])
def test_assortment_rows_match_schema_by_type(registry, server, headers):
    body = fetch(server, "/entity/assortment", headers=headers, filter="archived=true;archived=false")
    assert len(body["rows"]) == 200
    for row in body["rows"]:
        validate(registry, ENTITY_SCHEMAS[row["meta"]["type"]], row)
    validate(registry, "AssortmentList", {"meta": body["meta"], "context": body["context"], "rows": []})


@pytest.mark.parametrize("kind,schema", [("product", "ProductList"), ("variant", "VariantList"),
                                         ("service", "ServiceList"), ("bundle", "BundleList")])
def test_entity_lists_and_single_entities(registry, server, kind, schema):
    body = fetch(server, f"/entity/{kind}", limit=100)
    validate(registry, schema, body)
    validate(registry, ENTITY_SCHEMAS[kind], fetch(server, f"/entity/{kind}/{body['rows'][0]['id']}"))


@pytest.mark.parametrize("path,schema", [
    ("/entity/productfolder", "ProductFolderList"), ("/entity/store", "StoreList"), ("/entity/uom", "UomList"),
    ("/entity/currency", "CurrencyList"), ("/entity/organization", "OrganizationList"),
    ("/context/companysettings", "CompanySettings"), ("/context/employee", "Employee"),
])
def test_dictionaries(registry, server, path, schema):
    validate(registry, schema, fetch(server, path))


def test_folder_rows_and_price_types(registry, server):
    for row in fetch(server, "/entity/productfolder")["rows"]:
        validate(registry, "ProductFolder", row)
    price_types = fetch(server, "/context/companysettings/pricetype")
    assert [p["name"] for p in price_types] == ["Цена продажи", "Оптовая цена", "Цена для маркетплейсов"]
    for price_type in price_types:
        validate(registry, "PriceType", price_type)


def test_images_list(registry, server):
    item = next(i for i in server.catalog.items.values() if i.kind == "product" and i.image_count)
    validate(registry, "ImageList", fetch(server, f"/entity/product/{item.id}/images"))
    validate(registry, "ImageList", fetch(server, f"/entity/product/{item.id}/images",
                                          fields="downloadPermanentHref", limit=100))


def test_error_bodies(registry, server):
    bad = [
        requests.get(server.base_url + "/entity/product", headers={**AUTH, "Authorization": "Bearer nope"}),
        patiently("GET", server.base_url + "/entity/nothing", headers=AUTH),
        patiently("GET", server.base_url + "/entity/product", headers=AUTH, params={"limit": 5000}),
        patiently("GET", server.base_url + "/entity/product", headers=AUTH, params={"filter": "colour=red"}),
        patiently("POST", server.base_url + "/entity/product", headers=AUTH),
    ]
    assert [r.status_code for r in bad] == [401, 404, 400, 412, 405]
    for response in bad:
        validate(registry, "Error", response.json())


# (path, parameter, a value outside the enum the spec gives it, one inside)
ENUM_PARAMETERS = [
    ("/entity/assortment", "stockMode", "bogus", "all"),
    ("/entity/assortment", "quantityMode", "bogus", "positiveOnly"),
    ("/entity/assortment", "groupBy", "bogus", "variant"),
    ("/entity/product", "fields", "bogus", "minimumStock"),
    ("/entity/variant", "fields", "bogus", "minimumStock"),
    # components parameter fields: «В одном запросе можно передать только одно значение»
    ("/entity/product", "fields", "minimumStock,stock", "stock"),
    ("/entity/product/{product}", "fields", "bogus", "declaration"),
    ("/entity/product/{product}/images", "fields", "bogus", "downloadPermanentHref"),
]


@pytest.mark.parametrize("path, name, wrong, right", ENUM_PARAMETERS)
def test_a_value_outside_a_parameters_enum_is_refused(registry, server, path, name, wrong, right):
    """A query parameter the spec gives an enum takes only those values: md/_errors.md #1084 «Неверное значение
    '{значение}' параметра запроса '{параметр}', допустимые значения: '{список допустимых значений}'»."""
    product = next(i for i in server.catalog.items.values() if i.kind == "product" and not i.archived)
    url = server.base_url + path.format(product=product.id)
    refused = patiently("GET", url, headers=AUTH, params={name: wrong})
    assert refused.status_code == 400, refused.text[:300]
    validate(registry, "Error", refused.json())
    error = refused.json()["errors"][0]
    assert error["code"] == 1084 and error["parameter"] == name
    assert error["error"].startswith(f"Неверное значение '{wrong}' параметра запроса '{name}', допустимые значения: '")
    assert patiently("GET", url, headers=AUTH, params={name: right}).status_code == 200


@pytest.mark.parametrize("expand", ["components", "components.assortment"])
def test_bundles_with_expanded_components(registry, server, expand):
    body = fetch(server, "/entity/bundle", expand=expand, limit=100)
    assert body["rows"] and all("rows" in row["components"] for row in body["rows"])
    validate(registry, "BundleList", body)
    bundle_id = body["rows"][0]["id"]
    validate(registry, "Bundle", fetch(server, f"/entity/bundle/{bundle_id}", expand=expand))


def test_bundle_components_list(registry, server):
    """The spec answers GET .../components with BundleComponent (one); a list page is BundleComponentList."""
    bundle = next(i for i in server.catalog.items.values() if i.kind == "bundle")
    body = fetch(server, f"/entity/bundle/{bundle.id}/components")
    validate(registry, "BundleComponentList", body)
    validate(registry, "BundleComponentList", fetch(server, f"/entity/bundle/{bundle.id}/components",
                                                    expand="assortment", limit=100))
    component_id = body["rows"][0]["id"]
    validate(registry, "BundleComponent", fetch(server, f"/entity/bundle/{bundle.id}/components/{component_id}"))


def test_stock_report_row_links_are_meta(registry, server):
    """Reports are not in the spec; their links (row, uom, folder, store) are still spec Meta objects."""
    for path in ("/report/stock/all", "/report/stock/bystore"):
        for row in fetch(server, path, filter="stockMode=all", limit=50)["rows"]:
            links = [row["meta"], row.get("uom", {}).get("meta"), row.get("folder", {}).get("meta")]
            links += [entry["meta"] for entry in row.get("stockByStore", ())]
            for link in filter(None, links):
                validate(registry, "Meta", link)


def test_webhooks_and_their_notifications(registry, server):
    receiver = Receiver()
    try:
        created = patiently("POST", server.base_url + "/entity/webhook", headers=AUTH, json={
            "url": receiver.url, "action": "UPDATE", "entityType": "product", "diffType": "FIELDS"})
        assert created.status_code == 200, created.text
        validate(registry, "Webhook", created.json())
        stock_hook = patiently("POST", server.base_url + "/entity/webhookstock", headers=AUTH, json={
            "url": receiver.url, "stockType": "stock", "reportType": "bystore"})
        validate(registry, "WebhookStock", stock_hook.json())
        validate(registry, "WebhookList", fetch(server, "/entity/webhook"))
        validate(registry, "WebhookStockList", fetch(server, "/entity/webhookstock"))
        product = next(i for i in server.catalog.items.values() if i.kind == "product" and i.operated)
        server.catalog.update_item(product.id, name="Переименован")
        server.catalog.set_stock(product.id, server.catalog.stores[0].id, stock=42)
        bodies = receiver.wait_for(2)
        validate(registry, "WebhookNotificationPayload", next(b for b in bodies if "events" in b))
        validate(registry, "WebhookStockNotificationPayload", next(b for b in bodies if "reportUrl" in b))
    finally:
        receiver.stop()


def fixture_rows(name):
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"fixture {name} is absent")
    return json.loads(path.read_text(encoding="utf-8"))["rows"]


@pytest.mark.parametrize("path,fixture,documented,report_filter", [
    ("/report/stock/all", "report_stock_all.json", {"stockDays"}, "stockMode=all;quantityMode=all"),
    ("/report/stock/bystore", "report_stock_bystore.json", set(), "stockMode=all"),
])
def test_report_rows_have_vendor_keys(server, path, fixture, documented, report_filter):
    """Reports are not in the spec: rows use the vendor's keys (optional ones only where the fixture has them),
    plus those md/reports/_report_stock.md marks "+Обязательное при ответе" that its example omits."""
    expected = fixture_rows(fixture)
    always = set.intersection(*(set(row) for row in expected)) | documented
    possible = set.union(*(set(row) for row in expected)) | documented
    rows = fetch(server, path, filter=report_filter)["rows"]
    assert rows
    seen = set()
    for row in rows:
        assert always <= set(row) <= possible, sorted(set(row) ^ always)
        seen |= set(row)
    assert seen == possible
    if "stockByStore" in always:
        store_keys = set(expected[0]["stockByStore"][0])
        assert all(set(entry) == store_keys for row in rows for entry in row["stockByStore"])
