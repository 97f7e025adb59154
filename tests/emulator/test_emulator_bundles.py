"""Bundles, marking and the shape of the generated catalog, checked over loopback."""

import pytest

from emulator.catalog import TRACKING_TYPES
from tests.emulator.test_emulator import error_code, get, serving


@pytest.fixture(scope="module")
def server():
    yield from serving(600, 5)


def ok(srv, path, **params):
    response = get(srv, path, **params)
    assert response.status_code == 200, response.text[:300]
    return response.json()


def bundles(catalog):
    return [i for i in catalog.items.values() if i.kind == "bundle"]


def test_bundle_list_expands_components_only_up_to_limit_100(server):
    catalog = server.catalog
    listed = [b for b in bundles(catalog) if not b.archived]
    expanded = ok(server, "/entity/bundle", expand="components", limit=100)
    assert [row["id"] for row in expanded["rows"]] == [b.id for b in listed]
    for row, bundle in zip(expanded["rows"], listed):
        components = row["components"]
        assert components["meta"]["size"] == len(bundle.components) == len(components["rows"])
        assert [(c["assortment"]["meta"]["href"].rsplit("/", 1)[-1], c["quantity"]) for c in components["rows"]] \
            == list(bundle.components)
        assert all(set(c["assortment"]) == {"meta"} for c in components["rows"])
    silent = ok(server, "/entity/bundle", expand="components", limit=101)
    assert all(set(row["components"]) == {"meta"} for row in silent["rows"])
    whole = ok(server, "/entity/bundle", expand="components.assortment", limit=100)
    good = whole["rows"][0]["components"]["rows"][0]["assortment"]
    assert good["id"] == listed[0].components[0][0] and "name" in good
    single = ok(server, f"/entity/bundle/{listed[0].id}", expand="components")
    assert len(single["components"]["rows"]) == len(listed[0].components)


def test_assortment_keeps_components_as_a_link(server):
    rows = ok(server, "/entity/assortment", expand="components", limit=100)["rows"]
    bundle_rows = [row for row in rows if row["meta"]["type"] == "bundle"]
    assert bundle_rows and all(set(row["components"]) == {"meta"} for row in bundle_rows)
    assert all(row["components"]["meta"]["href"].endswith(f"/entity/bundle/{row['id']}/components")
               for row in bundle_rows)


def test_components_endpoint_pages_the_components(server):
    bundle = max(bundles(server.catalog), key=lambda b: len(b.components))
    path = f"/entity/bundle/{bundle.id}/components"
    first = ok(server, path, limit=1)
    assert first["meta"]["size"] == len(bundle.components) and first["meta"]["type"] == "bundlecomponent"
    assert first["meta"]["nextHref"].endswith("limit=1&offset=1")
    seen, url = [], server.base_url + path + "?limit=1"
    while url:
        page = ok(server, url)
        seen += page["rows"]
        url = page["meta"].get("nextHref")
    assert [(c["assortment"]["meta"]["type"], c["quantity"]) for c in seen] == \
        [(server.catalog.items[part].kind, quantity) for part, quantity in bundle.components]
    one = ok(server, f"{path}/{seen[0]['id']}")
    assert one == seen[0]
    assert error_code(get(server, f"{path}/00000000-0000-4000-8000-000000000000")) == 1021
    assert error_code(get(server, "/entity/bundle/00000000-0000-4000-8000-000000000000/components")) == 1021


def test_generated_bundles_cover_the_hard_cases(server):
    catalog = server.catalog
    parts = [(catalog.items[part], quantity) for b in bundles(catalog) for part, quantity in b.components]
    kinds = {good.kind for good, _ in parts}
    assert {"product", "variant"} <= kinds
    assert any(good.archived for good, _ in parts)
    assert any(not good.operated or sum(good.stock[0::3]) - sum(good.stock[1::3]) <= 0
               for good, _ in parts if good.stock is not None)
    assert any(quantity > 1 for _, quantity in parts)
    assert any(not float(quantity).is_integer() for _, quantity in parts)


def test_tracking_type_on_products_and_bundles_not_on_variants(server):
    rows = ok(server, "/entity/assortment", filter="archived=true;archived=false")["rows"]
    products = [row for row in rows if row["meta"]["type"] == "product"]
    seen = {row["trackingType"] for row in products}
    assert {"NOT_TRACKED", "SHOES", "TOBACCO"} <= seen <= set(TRACKING_TYPES)
    assert sum(row["trackingType"] == "NOT_TRACKED" for row in products) > len(products) / 2
    assert all("trackingType" not in row for row in rows if row["meta"]["type"] == "variant")
    assert all(row["trackingType"] in TRACKING_TYPES for row in rows if row["meta"]["type"] == "bundle")


def test_catalog_has_reserved_never_stocked_goods_and_archived_folders(server):
    catalog = server.catalog
    goods = [i for i in catalog.items.values() if i.stock is not None and not i.variant_ids]
    assert any(i.operated and sum(i.stock[0::3]) > 0 and i.stock[0::3] == i.stock[1::3] for i in goods)
    assert any(not i.operated for i in goods)
    folders = ok(server, "/entity/productfolder", filter="archived=true")["rows"]
    rows = ok(server, "/entity/assortment")["rows"]
    used = {row["productFolder"]["meta"]["href"].rsplit("/", 1)[-1] for row in rows if "productFolder" in row}
    parents = {f.parent_id for f in catalog.folders.values()}
    assert any(f["id"] not in used and f["id"] not in parents for f in folders)  # archived and empty
    assert any(f["id"] in used for f in folders)  # archived, still holding goods on sale
