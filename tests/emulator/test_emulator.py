"""The MoySklad emulator over loopback: protocol rules, limits, filters, reports, faults, data."""

import base64
import gzip
import http.client
import json
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import requests

from emulator import EmulatorServer, generate_catalog
from emulator.catalog import HOSTILE_NAMES, NAME_MAX, format_moment, moscow_now

TOKEN = "emu-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Accept-Encoding": "gzip"}
WITHOUT_STOCK = {**AUTH, "X-Lognex-Remap-Beta-Feature": "assortmentWithoutStock"}


def serving(products: int, seed: int, **options):
    """A started emulator on a fresh catalog, stopped when the fixture that yields from this ends."""
    srv = EmulatorServer(generate_catalog(products=products, seed=seed), token=TOKEN, **options).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def server():
    yield from serving(200, 1)


@pytest.fixture
def fresh():
    """A private server for tests that mutate data, faults or spend the rate budget."""
    yield from serving(60, 3)


def get(srv, path, headers=AUTH, **params):
    """GET that waits out 429s, so the shared server's rate budget never makes a test flaky."""
    url = path if path.startswith("http") else srv.base_url + path
    for _ in range(20):
        response = requests.get(url, headers=headers, params=params or None, allow_redirects=False)
        if response.status_code != 429:
            return response
        time.sleep(int(response.headers["X-Lognex-Retry-After"]) / 1000)
    raise AssertionError("still throttled")


def error_code(response):
    return response.json()["errors"][0]["code"]


def test_gzip_is_mandatory_415_with_empty_body(server):
    response = requests.get(server.base_url + "/entity/assortment", headers={
        "Authorization": AUTH["Authorization"], "Accept-Encoding": "identity"})
    assert response.status_code == 415
    assert response.content == b""


def test_json_is_gzip_encoded_with_exact_length(server):
    conn = http.client.HTTPConnection(server.origin.split("//")[1])
    conn.request("GET", "/api/remap/1.2/entity/store", headers=AUTH)
    raw = conn.getresponse()
    body = raw.read()
    assert raw.getheader("Content-Encoding") == "gzip"
    assert raw.getheader("Content-Type") == "application/json;charset=utf-8"
    assert int(raw.getheader("Content-Length")) == len(body)
    assert json.loads(gzip.decompress(body))["meta"]["size"] == 3
    conn.close()


@pytest.mark.parametrize("authorization", ["Bearer wrong", "Basic YWRtaW5AZW11Ondyb25n", None])
def test_bad_credentials_401_1056(server, authorization):
    headers = {"Accept-Encoding": "gzip"}
    if authorization:
        headers["Authorization"] = authorization
    response = requests.get(server.base_url + "/entity/assortment", headers=headers)
    assert response.status_code == 401
    assert error_code(response) == 1056
    assert response.headers["X-Lognex-Auth"] == "-1056"
    assert "X-Lognex-Auth-Message" in response.headers


def test_basic_auth_and_a_users_token_cost_four_units_from_december_2026(fresh):
    """md/_restrictions.md: «с 1 декабря 2026: 1 запрос = 4 единицы» for login/password and a user's token."""
    response = requests.get(fresh.base_url + "/entity/store", auth=("admin@emu", "emu-pass"),
                            headers={"Accept-Encoding": "gzip"})
    assert response.status_code == 200
    assert response.headers["X-RateLimit-Remaining"] == "41"
    assert fresh.request_log[-1]["auth"] == "basic" and fresh.request_log[-1]["cost"] == 4
    assert get(fresh, "/entity/store").status_code == 200
    assert fresh.request_log[-1]["auth"] != "basic" and fresh.request_log[-1]["cost"] == 4


def test_credentials_change_at_runtime(fresh):
    assert get(fresh, "/entity/store").status_code == 200
    fresh.set_credentials(token="rotated")
    assert get(fresh, "/entity/store").status_code == 401
    assert get(fresh, "/entity/store", headers={**AUTH, "Authorization": "Bearer rotated"}).status_code == 200


def test_security_token_issues_new_token(fresh):
    response = requests.post(fresh.base_url + "/security/token", auth=("admin@emu", "emu-pass"),
                             headers={"Accept-Encoding": "gzip"})
    assert response.status_code == 201
    token = response.json()["access_token"]
    assert get(fresh, "/entity/uom", headers={**AUTH, "Authorization": f"Bearer {token}"}).status_code == 200
    assert get(fresh, "/entity/uom").status_code == 401  # the earlier token is revoked


def test_paging_meta_and_next_href(server):
    first = get(server, "/entity/assortment", limit=50).json()
    meta = first["meta"]
    assert meta["size"] == len([i for i in server.catalog.items.values() if not i.archived])
    assert meta["limit"] == 50 and meta["offset"] == 0 and "previousHref" not in meta
    assert meta["nextHref"].endswith("limit=50&offset=50")
    ids = [row["id"] for row in first["rows"]]
    url = meta["nextHref"]
    while url:
        page = get(server, url).json()
        assert page["meta"]["previousHref"]
        ids += [row["id"] for row in page["rows"]]
        url = page["meta"].get("nextHref")
    assert len(ids) == len(set(ids)) == meta["size"]


@pytest.mark.parametrize("limit", ["1001", "0", "abc"])
def test_limit_out_of_range_rejected(server, limit):
    response = get(server, "/entity/assortment", limit=limit)
    assert response.status_code == 400
    assert error_code(response) == 1040


def test_fields_honoured_only_up_to_limit_100(server):
    item = next(i for i in server.catalog.items.values() if i.kind == "product" and i.image_count)
    path = f"/entity/product/{item.id}/images"
    small = get(server, path, fields="downloadPermanentHref", limit=100).json()
    large = get(server, path, fields="downloadPermanentHref", limit=101).json()
    assert all("downloadPermanentHref" in row["meta"] for row in small["rows"])
    assert not any("downloadPermanentHref" in row["meta"] for row in large["rows"])
    expanded = get(server, "/entity/assortment", expand="productFolder,images", limit=1000)
    assert expanded.status_code == 200
    folder_rows = [row for row in expanded.json()["rows"] if "productFolder" in row]
    assert folder_rows and all(set(row["productFolder"]) == {"meta"} for row in folder_rows)


def test_rate_limit_429_1049_with_headers(fresh):
    statuses = []
    for _ in range(12):
        response = requests.get(fresh.base_url + "/report/stock/all", headers=AUTH, params={"limit": 1})
        statuses.append(response.status_code)
        if response.status_code == 429:
            break
    assert statuses[:9] == [200] * 9 and statuses[-1] == 429
    assert error_code(response) == 1049
    assert response.headers["X-RateLimit-Remaining"] == "0"
    assert 0 < int(response.headers["X-Lognex-Retry-After"]) <= 3000
    assert response.headers["X-Lognex-Retry-TimeInterval"] == "3000"
    assert fresh.stats["throttled"] == 1
    time.sleep(int(response.headers["X-Lognex-Retry-After"]) / 1000)
    assert requests.get(fresh.base_url + "/report/stock/all", headers=AUTH).status_code == 200


def at_once(server, header_sets: list[dict]) -> list[requests.Response]:
    """One /entity/uom request per header set, all in flight at once even when a loaded machine starts the threads
    late: each waits for the others, and with the server's latency none is back before the last is sent."""
    together = threading.Barrier(len(header_sets))

    def request(headers):
        together.wait()
        return requests.get(server.base_url + "/entity/uom", headers=headers)

    with ThreadPoolExecutor(max_workers=len(header_sets)) as pool:
        return list(pool.map(request, header_sets))


def test_parallel_limit_429_1073(fresh):
    fresh.faults.latency_ms = 1500
    responses = at_once(fresh, [AUTH] * 8)
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) == 5 and codes.count(429) == 3
    assert {error_code(r) for r in responses if r.status_code == 429} == {1073}
    assert fresh.stats["max_in_flight"] >= 6
    refused = [r for r in responses if r.status_code == 429]
    # md/_general.md: the headers do not show the parallel limit; they tell the unit budget, here barely touched
    assert all(int(r.headers["X-RateLimit-Remaining"]) > 0 and "X-Lognex-Retry-After" not in r.headers for r in refused)
    assert refused[0].json()["errors"][0]["error"] == "Превышено ограничение на одновременное количество запросов"


def test_a_users_token_and_login_share_one_budget_and_one_set_of_parallel_slots(fresh):
    """DOMAIN.md: «45 units per 3 s counted per user …; 5 parallel requests per user»: the token and the
    login/password of admin@emu are one user, so they draw on one budget and one set of slots."""
    basic = {"Accept-Encoding": "gzip", "Authorization": "Basic " + base64.b64encode(b"admin@emu:emu-pass").decode()}
    by_token = requests.get(fresh.base_url + "/entity/uom", headers=AUTH)
    by_login = requests.get(fresh.base_url + "/entity/uom", headers=basic)
    cost = fresh.request_log[-1]["cost"]
    assert int(by_login.headers["X-RateLimit-Remaining"]) == int(by_token.headers["X-RateLimit-Remaining"]) - cost
    time.sleep(3.1)  # the window empties, so only the parallel limit can refuse below
    fresh.faults.latency_ms = 1500
    responses = at_once(fresh, [AUTH, basic] * 3)
    assert sorted(r.status_code for r in responses) == [200] * 5 + [429]
    assert {error_code(r) for r in responses if r.status_code == 429} == {1073}


def test_other_users_tokens_each_have_their_own_rate_budget():
    """One emulator standing in for many accounts: MoySklad counts 45 units / 3 s per user, so one
    user's 429 leaves another's requests alone; a token nobody was given is still a 401."""
    srv = EmulatorServer(generate_catalog(products=20, seed=4), token=TOKEN, other_tokens=("shop-2", "shop-3")).start()
    try:
        def stock_report(token):
            return requests.get(srv.base_url + "/report/stock/all", params={"limit": 1},
                                headers={"Authorization": f"Bearer {token}", "Accept-Encoding": "gzip"})

        statuses = [stock_report("shop-2").status_code for _ in range(10)]
        assert statuses[:9] == [200] * 9 and statuses[9] == 429  # 5 units a report: the 10th is over 45
        assert stock_report("shop-3").status_code == 200
        assert stock_report(TOKEN).status_code == 200
        assert stock_report("shop-4").status_code == 401
    finally:
        srv.stop()


def test_filter_archived_and_updated(server):
    catalog = server.catalog
    every = get(server, "/entity/product", filter="archived=true;archived=false").json()["meta"]["size"]
    archived = get(server, "/entity/product", filter="archived=true").json()
    default = get(server, "/entity/product").json()["meta"]["size"]
    products = [i for i in catalog.items.values() if i.kind == "product"]
    assert every == len(products)
    assert archived["meta"]["size"] == len([p for p in products if p.archived]) > 0
    assert all(row["archived"] for row in archived["rows"])
    assert default == every - archived["meta"]["size"]
    moments = sorted(p.updated for p in products if not p.archived)
    cutoff = moments[len(moments) // 2].strftime("%Y-%m-%d %H:%M:%S")
    recent = get(server, "/entity/product", filter=f"updated>={cutoff}").json()
    assert recent["meta"]["size"] == len([m for m in moments if m.strftime("%Y-%m-%d %H:%M:%S") >= cutoff])
    assert all(row["updated"][:19] >= cutoff for row in recent["rows"])


def test_unknown_filter_and_bad_date_rejected(server):
    unknown = get(server, "/entity/assortment", filter="colour=red")
    assert unknown.status_code == 412 and error_code(unknown) == 1034
    assert unknown.json()["errors"][0]["error"] == "Ошибка фильтрации: Неизвестное поле фильтрации 'colour'"
    assert error_code(get(server, "/entity/product", filter="updated>=yesterday")) == 1035
    # md/_general.md: a filter may leave the seconds out; a date alone is no documented form
    assert get(server, "/entity/product", filter="updated>=2020-01-01 10:00").status_code == 200
    assert error_code(get(server, "/entity/product", filter="updated>=2020-01-01")) == 1035
    assert error_code(get(server, "/report/stock/bystore/current", changedSince="2020-01-01 10:00")) == 1035


def test_update_delete_add_are_visible(fresh):
    catalog = fresh.catalog
    product = next(i for i in catalog.items.values() if i.kind == "product" and i.variant_ids and not i.archived)
    since = format_moment(moscow_now() - timedelta(seconds=2))[:19]
    catalog.update_item(product.id, name="Переименован", sale_price=12345)
    changed = get(fresh, "/entity/product", filter=f"updated>={since}").json()["rows"]
    assert [(r["name"], r["salePrices"][0]["value"]) for r in changed] == [("Переименован", 12345.0)]
    variant_id = product.variant_ids[0]
    catalog.delete_item(product.id)
    assert get(fresh, f"/entity/product/{product.id}").status_code == 404
    assert get(fresh, f"/entity/variant/{variant_id}").status_code == 404
    current = get(fresh, "/report/stock/all/current", include="zeroLines").json()
    assert variant_id not in {row["assortmentId"] for row in current}
    new_id = catalog.add_product(name="Новинка", price_kopecks=99900, variants=2)
    rows = get(fresh, "/entity/assortment").json()["rows"]
    assert [r["name"] for r in rows[-3:]][0] == "Новинка" and rows[-1]["product"]["meta"]["href"].endswith(new_id)


def test_assortment_without_stock_header_vs_legacy(server):
    legacy = get(server, "/entity/assortment", limit=100).json()["rows"]
    modern = get(server, "/entity/assortment", headers=WITHOUT_STOCK, limit=100).json()["rows"]
    stock_keys = {"stock", "reserve", "inTransit", "quantity"}
    assert [r["id"] for r in legacy] == [r["id"] for r in modern]
    for row in legacy:
        assert (stock_keys <= set(row)) == (row["meta"]["type"] in ("product", "variant"))
    assert not any(stock_keys & set(row) for row in modern)
    assert {r["meta"]["type"] for r in get(server, "/entity/assortment").json()["rows"]} == {
        "product", "variant", "service", "bundle"}


def test_stock_current_reports(fresh):
    catalog = fresh.catalog
    item = next(i for i in catalog.items.values() if i.stock is not None and not i.variant_ids)
    store = catalog.stores[1]
    before = format_moment(moscow_now() - timedelta(seconds=1))[:19]
    catalog.set_stock(item.id, store.id, stock=10, reserve=3, in_transit=4)
    for other in (0, 2):
        catalog.set_stock(item.id, catalog.stores[other].id, stock=0, reserve=0, in_transit=0)
    expected = {"stock": 10, "freeStock": 7, "quantity": 11, "reserve": 3, "inTransit": 4}
    for stock_type, value in expected.items():
        rows = get(fresh, "/report/stock/all/current", stockType=stock_type, filter=f"assortmentId={item.id}").json()
        assert rows == [{"assortmentId": item.id, stock_type: value}]
    by_store = get(fresh, "/report/stock/bystore/current", filter=f"assortmentId={item.id}").json()
    assert by_store == [{"assortmentId": item.id, "storeId": store.id, "stock": 10}]
    with_zero = get(fresh, "/report/stock/bystore/current", filter=f"assortmentId={item.id}", include="zeroLines").json()
    assert len(with_zero) == 3
    changed = get(fresh, "/report/stock/all/current", changedSince=before).json()
    assert [row["assortmentId"] for row in changed] == [item.id]
    too_old = format_moment(moscow_now() - timedelta(days=2))[:19]
    assert get(fresh, "/report/stock/all/current", changedSince=too_old).status_code == 400
    assert get(fresh, "/report/stock/all/current", stockType="bogus").status_code == 400


def test_stock_report_rows_and_modes(server):
    catalog = server.catalog
    rows = get(server, "/report/stock/all", filter="stockMode=all;quantityMode=all").json()
    in_reports = [i for i in catalog.items.values() if i.operated and not i.archived]
    assert rows["meta"]["size"] == len(in_reports)
    assert {r["meta"]["type"] for r in rows["rows"]} == {"product", "variant"}
    default = get(server, "/report/stock/all").json()
    assert default["meta"]["size"] < len(in_reports)
    assert all(r["quantity"] != 0 for r in default["rows"])
    by_store = get(server, "/report/stock/bystore", limit=5).json()["rows"]
    assert all(len(r["stockByStore"]) == 3 for r in by_store)
    variant_row = next(r for r in rows["rows"] if r["meta"]["type"] == "variant")
    variant = catalog.items[variant_row["meta"]["href"].split("/")[-1].split("?")[0]]
    assert variant_row["price"] == float(variant.cost)


def test_download_redirect_and_expiry(fresh, monkeypatch):
    item = next(i for i in fresh.catalog.items.values() if i.kind == "product" and i.image_count)
    images = get(fresh, f"/entity/product/{item.id}/images").json()
    assert images["meta"]["size"] == item.image_count
    download = images["rows"][0]["meta"]["downloadHref"]
    assert requests.get(download, headers={"Accept-Encoding": "gzip"}, allow_redirects=False).status_code == 401
    redirect = get(fresh, download)
    assert redirect.status_code == 302
    image = requests.get(redirect.headers["Location"])
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(image.content) == images["rows"][0]["size"]
    import emulator.server as server_module
    real = server_module.time.monotonic
    monkeypatch.setattr(server_module.time, "monotonic", lambda: real() + 61)
    assert requests.get(redirect.headers["Location"]).status_code == 403


def test_fault_switches(fresh):
    fresh.faults.seed = 7
    fresh.faults.error_rate = 1.0
    statuses = {get(fresh, "/entity/uom").status_code for _ in range(12)}
    assert statuses <= {500, 502, 503} and len(statuses) > 1
    fresh.faults.error_rate = 0.0
    fresh.faults.reset_rate = 1.0
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(fresh.base_url + "/entity/uom", headers=AUTH)
    fresh.faults.reset_rate = 0.0
    fresh.faults.truncate_rate = 1.0
    truncated = requests.get(fresh.base_url + "/entity/uom", headers=AUTH)
    with pytest.raises(ValueError):
        truncated.json()
    fresh.faults.truncate_rate = 0.0
    fresh.faults.fail_after = {"path": "/entity/assortment", "after": 2, "status": 500}
    statuses = [get(fresh, "/entity/assortment", limit=1).status_code for _ in range(4)]
    assert statuses == [200, 200, 500, 500]
    assert get(fresh, "/entity/uom").status_code == 200
    fresh.faults.fail_after = None
    assert get(fresh, "/entity/assortment", limit=1).status_code == 200


@pytest.mark.parametrize("framing", ["close", "length", "chunked"])
def test_truncated_answer_is_a_decodable_gzip_prefix(fresh, framing):
    """A cut connection delivers the start of the gzip stream: it decodes to the start of the JSON, then stops."""
    whole = json.dumps(get(fresh, "/entity/assortment").json(), ensure_ascii=False, separators=(",", ":"))
    assert requests.post(fresh.origin + "/_emulator/faults",
                         json={"truncate_rate": 1.0, "truncate_framing": framing}).status_code == 200
    conn = http.client.HTTPConnection(fresh.origin.split("//")[1])
    conn.request("GET", "/api/remap/1.2/entity/assortment", headers=AUTH)
    raw = conn.getresponse()
    try:
        body = raw.read()
        complete = True
    except http.client.IncompleteRead as error:
        body, complete = error.partial, False
    conn.close()
    assert body[:2] == b"\x1f\x8b" and raw.getheader("Connection") == "close"
    text = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(body).decode("utf-8")
    assert whole.startswith(text) and len(whole) // 3 < len(text) < len(whole)
    with pytest.raises(zlib.error, match="incomplete or truncated"):
        zlib.decompress(body, 16 + zlib.MAX_WBITS)
    if framing == "close":  # no length given: the client cannot tell, and meets the JSON cut short
        assert complete and raw.getheader("Content-Length") is None and raw.getheader("Transfer-Encoding") is None
        with pytest.raises(ValueError):
            requests.get(fresh.base_url + "/entity/assortment", headers=AUTH).json()
    else:  # the announced length or the missing last chunk gives the cut away
        assert not complete
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            requests.get(fresh.base_url + "/entity/assortment", headers=AUTH)
    assert requests.post(fresh.origin + "/_emulator/faults", json={"truncate_framing": "half"}).status_code == 400


def test_latency_and_http_control(fresh):
    control = fresh.origin + "/_emulator"
    assert requests.post(control + "/faults", json={"latency_ms": 150}).json()["latency_ms"] == 150
    started = time.monotonic()
    get(fresh, "/entity/currency")
    assert time.monotonic() - started >= 0.15
    requests.post(control + "/faults", json={"latency_ms": 0})
    stats = requests.get(control + "/stats").json()
    assert stats["by_path"]["/entity/currency"] == 1 and stats["status"]["200"] == 1
    requests.post(control + "/reset-stats")
    assert requests.get(control + "/stats").json()["requests"] == 0
    assert requests.post(control + "/faults", json={"bogus": 1}).status_code == 400


def test_unknown_path_and_method(server):
    assert error_code(get(server, "/entity/nothing")) == 1002
    response = requests.delete(server.base_url + "/entity/product", headers=AUTH)
    assert response.status_code == 405 and error_code(response) == 1039


def test_request_log_shape(fresh):
    get(fresh, "/entity/store", limit=2)
    entry = fresh.request_log[-1]
    assert entry["method"] == "GET" and entry["path"] == "/entity/store" and entry["query"] == {"limit": "2"}
    assert entry["status"] == 200 and entry["cost"] == 4 and entry["auth"] == "bearer" and entry["t"] > 0  # from 2026-12


def test_generator_is_deterministic_and_exact_size():
    def snapshot(catalog):
        return [(i.id, i.kind, i.name, i.sale_prices, i.stock, i.updated) for i in catalog.items.values()]

    assert snapshot(generate_catalog(products=300, seed=5)) == snapshot(generate_catalog(products=300, seed=5))
    assert snapshot(generate_catalog(products=300, seed=5)) != snapshot(generate_catalog(products=300, seed=6))
    for size in (1, 7, 999):
        assert len(generate_catalog(products=size, seed=2).items) == size


def test_catalog_content(server):
    catalog = server.catalog
    items = list(catalog.items.values())
    names = {i.name for i in items}
    for hostile in HOSTILE_NAMES:
        assert hostile[:NAME_MAX] in names
    assert any(len(name) == NAME_MAX for name in names)
    assert any("<b>HTML</b>" in i.description for i in items)
    assert any(i.archived for i in items)
    variants = [i for i in items if i.kind == "variant"]
    assert any(v.sale_prices == () for v in variants) and any(v.sale_prices for v in variants)
    assert any(v < 0 for i in items if i.stock for v in i.stock[0::3])
    assert any(not i.vat_enabled for i in items) and any(i.vat == 0 and i.vat_enabled for i in items)
    assert {len(f.full_path.split("/")) for f in catalog.folders.values()} == {1, 2, 3}
    assert len(catalog.price_types) == 3 and len(catalog.stores) == 3
    hostile_rows = get(server, "/entity/product", filter="archived=true;archived=false").json()["rows"]
    assert "Товар\x01с управляющим\x0bсимволом" in {r["name"] for r in hostile_rows}
