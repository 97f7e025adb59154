"""The retailCRM client against the retailCRM emulator over loopback: keys, refusals, limits, pacing, faults."""

import logging
import threading
import time

import pytest
import requests

from emulator.retailcrm import INVENTORIES, PRICES, RetailCrmEmulator
from retailcrm.client import RetailCrmClient
from retailcrm.errors import (
    KEY_MENU,
    AccessDenied,
    KeyRejected,
    RequestRejected,
    ServerFailure,
    TransportFailure,
    UnknownReference,
)

KEY = "rcrm-key"
FEED = b"""<?xml version="1.0" encoding="UTF-8"?>
<yml_catalog date="2026-01-01 00:00:00"><shop><offers>
<offer id="115" productId="43"><name>A</name><xmlId>82</xmlId></offer>
<offer id="116" productId="43"><name>B</name><xmlId>83</xmlId></offer>
</offers></shop></yml_catalog>"""


@pytest.fixture
def crm():
    server = RetailCrmEmulator(api_key=KEY, sites=("shop", "outlet")).start()
    yield server
    server.stop()


@pytest.fixture
def client_for(crm):
    """Clients with short back-off, so retry tests stay quick; all closed after the test."""
    made = []

    def make(key=KEY, **overrides):
        options = dict(retry_base_delay=0.02, retry_max_delay=0.2, connect_timeout=2, read_timeout=5)
        options.update(overrides)
        client = RetailCrmClient(crm.base_url, key, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def stock_row(external_id, available, store="main", purchase_price=None):
    entry = {"code": store, "available": available}
    if purchase_price is not None:
        entry["purchasePrice"] = purchase_price
    return {"externalId": external_id, "stores": [entry]}


# --- keys -------------------------------------------------------------------------------------------

def test_a_wrong_key_is_rejected_after_one_request_and_the_message_says_where_to_get_one(crm, client_for):
    client = client_for("not-the-key")
    with pytest.raises(KeyRejected) as caught:
        client.stores()
    assert crm.stats_snapshot()["requests"] == 1
    assert client.retries == 0
    assert "wrong or was deleted" in str(caught.value) and KEY_MENU in str(caught.value)
    assert caught.value.title == "retailCRM не принял API-ключ"
    assert "Ключи доступа к API" in caught.value.action


def test_a_missing_key_is_rejected_after_one_request(crm, client_for):
    client = client_for("")
    with pytest.raises(KeyRejected, match="no API key was sent"):
        client.upload_inventories([stock_row("115", 1)], site="shop")
    assert crm.stats_snapshot()["requests"] == 1
    assert client.retries == 0


def test_a_key_revoked_through_the_control_endpoint_stops_the_next_request(crm, client_for):
    client = client_for()
    assert set(client.stores()) == {"main", "spb"}
    requests.post(crm.base_url + "/_emulator/faults", json={"revoked": True}, timeout=5).raise_for_status()
    with pytest.raises(KeyRejected):
        client.stores()
    assert client.retries == 0


def test_a_key_without_the_price_method_is_denied_prices_but_may_push_stock(crm, client_for):
    crm.load_icml(FEED, "shop")
    crm.add_key("stock-only", methods={INVENTORIES})
    client = client_for("stock-only")
    assert "/api/store/inventories/upload" in client.credentials()["credentials"]  # retailCRM lists no version
    assert "/api/store/prices/upload" not in client.credentials()["credentials"]
    assert client.upload_inventories([stock_row("115", 4)], site="shop").processed == 1
    with pytest.raises(AccessDenied) as caught:
        client.upload_prices([{"externalId": "115", "site": "shop", "prices": [{"code": "base", "price": 10}]}])
    assert PRICES in str(caught.value) and KEY_MENU in str(caught.value)
    assert client.retries == 0
    assert crm.prices("shop", "115") == {}


def test_a_key_limited_to_one_shop_is_denied_the_other(crm, client_for):
    crm.add_key("shop-only", sites={"shop"})
    client = client_for("shop-only")
    assert client.credentials()["siteAccess"] == "access_selective"
    assert client.credentials()["sitesAvailable"] == ["shop"]
    assert set(client.sites()) == {"shop"}
    with pytest.raises(AccessDenied):
        client.upload_inventories([stock_row("115", 1)], site="outlet")
    assert crm.stats_snapshot()["by_path"][INVENTORIES] == 1


# --- refusals ---------------------------------------------------------------------------------------

def test_an_unknown_warehouse_code_is_refused_once_and_named(crm, client_for):
    crm.load_icml(FEED, "shop")
    client = client_for()
    with pytest.raises(UnknownReference) as caught:
        client.upload_inventories([stock_row("115", 1), stock_row("116", 2, store="moscow")], site="shop")
    assert "moscow" in str(caught.value)
    assert caught.value.status == 400 and not caught.value.retriable
    assert crm.stats_snapshot()["by_path"][INVENTORIES] == 1
    assert crm.stock("shop", "115") == {}  # the whole batch was refused


def test_an_unknown_price_type_or_shop_is_refused_and_named(crm, client_for):
    client = client_for()
    with pytest.raises(UnknownReference, match="retail"):
        client.upload_prices([{"externalId": "115", "site": "shop", "prices": [{"code": "retail", "price": 1}]}])
    with pytest.raises(UnknownReference, match="nowhere"):
        client.upload_inventories([stock_row("115", 1)], site="nowhere")
    assert client.retries == 0


def test_more_than_250_items_never_leave_the_client_and_250_do(crm, client_for):
    client = client_for()
    with pytest.raises(ValueError, match="at most 250"):
        client.upload_inventories([stock_row(str(i), 1) for i in range(251)], site="shop")
    with pytest.raises(ValueError, match="at most 250"):
        client.upload_prices([{"externalId": str(i), "site": "shop", "prices": []} for i in range(251)])
    assert crm.stats_snapshot()["requests"] == 0
    result = client.upload_inventories([stock_row(str(i), 1) for i in range(250)], site="shop")
    assert result.processed == 0 and len(result.not_found) == 250
    assert crm.stats_snapshot()["max_upload_items"] == 250


def test_a_request_the_server_refuses_for_its_form_is_not_retried(crm, client_for):
    client = client_for()
    with pytest.raises(RequestRejected, match="Set one of the following fields"):
        client.upload_inventories([{"stores": [{"code": "main", "available": 1}]}], site="shop")
    assert client.retries == 0


# --- offers and what reaches retailCRM ----------------------------------------------------------------

def test_offers_are_not_found_until_the_feed_is_loaded_then_stock_lands(crm, client_for, shared_fixtures):
    client = client_for()
    batch = [stock_row("115", 5, purchase_price=13200), {"xmlId": "83", "stores": [{"code": "spb", "available": 2}]}]
    before = client.upload_inventories(batch, site="shop")
    assert before.processed == 0
    assert before.not_found == [{"externalId": "115"}, {"xmlId": "83"}]
    assert crm.load_icml(shared_fixtures / "icml" / "retailcrm-doc-example-ru.xml", "shop") == 4
    after = client.upload_inventories(batch, site="shop")
    assert (after.processed, after.not_found) == (2, [])
    assert crm.stock("shop", "115") == {"main": {"available": 5, "purchasePrice": 13200}}
    assert crm.stock("shop", "116") == {"spb": {"available": 2}}  # xmlId 83 is offer 116 in the feed


def test_offers_are_known_per_shop(crm, client_for):
    crm.load_icml(FEED, "shop")
    client = client_for()
    assert client.upload_inventories([stock_row("115", 1)], site="outlet").not_found == [{"externalId": "115"}]
    assert client.upload_inventories([stock_row("115", 1)], site="shop").processed == 1
    assert crm.stock("outlet", "115") == {}


def test_prices_per_type_are_set_and_removed_and_show_in_the_state_endpoint(crm, client_for):
    crm.load_icml(FEED, "shop")
    client = client_for()
    result = client.upload_prices([
        {"externalId": "115", "site": "shop",
         "prices": [{"code": "base", "price": 14000}, {"code": "wholesale", "price": 12500}]},
        {"externalId": "999", "site": "shop", "prices": [{"code": "base", "price": 1}]},
    ])
    assert result.processed == 1 and result.not_found == [{"externalId": "999"}]
    assert crm.prices("shop", "115") == {"base": 14000, "wholesale": 12500}
    client.upload_prices([{"xmlId": "82", "site": "shop", "prices": [{"code": "wholesale", "remove": True}]}])
    assert crm.prices("shop", "115") == {"base": 14000}
    state = requests.get(crm.base_url + "/_emulator/state", timeout=5).json()
    assert state["shop"]["115"]["prices"] == {"base": 14000}
    assert state["shop"]["115"]["xmlId"] == "82"


def test_reference_lists_come_keyed_by_code(crm, client_for):
    client = client_for()
    assert set(client.sites()) == {"shop", "outlet"}
    assert set(client.stores()) == {"main", "spb"}
    price_types = client.price_types()
    assert set(price_types) == {"base", "wholesale"} and price_types["base"]["default"] is True


# --- pacing -----------------------------------------------------------------------------------------

def test_a_burst_of_40_requests_from_four_clients_of_one_key_is_paced_without_a_503(crm, client_for):
    clients = [client_for() for _ in range(4)]
    start = time.monotonic()
    threads = [threading.Thread(target=lambda c=c: [c.stores() for _ in range(10)]) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - start
    stats = crm.stats_snapshot()
    assert stats["status"] == {"200": 40}
    assert stats["rate_limited"] == 0
    assert sum(c.throttled for c in clients) == 0
    assert elapsed >= 3.0  # 10 a second: the 31st request cannot leave before the 3rd second


def test_when_another_program_spends_the_key_the_client_waits_and_succeeds(crm, client_for):
    client = client_for()
    with requests.Session() as other:
        for _ in range(10):
            other.get(crm.api_url + "/reference/sites", headers={"X-API-Key": KEY}, timeout=5)
    assert set(client.stores()) == {"main", "spb"}
    assert client.throttled >= 1 and client.retries >= 1
    assert crm.stats_snapshot()["rate_limited"] == client.throttled


# --- faults -----------------------------------------------------------------------------------------

def test_a_storm_of_5xx_and_resets_is_retried_to_success_without_logging_the_key(crm, client_for, caplog):
    crm.load_icml(FEED, "shop")
    crm.faults.update({"seed": 7, "error_rate": 0.3, "reset_rate": 0.1})
    client = client_for(max_retries=8)
    with caplog.at_level(logging.WARNING, logger="retailcrm.client"):
        for n in range(15):
            client.upload_inventories([stock_row("115", n), stock_row("116", 100 + n)], site="shop")
    assert crm.stock("shop", "115") == {"main": {"available": 14}}
    assert crm.stock("shop", "116") == {"main": {"available": 114}}
    statuses = crm.stats_snapshot()["status"]
    assert {"500", "502", "503"} & set(statuses) and "0" in statuses  # "0": a reset connection
    assert client.retries > 0 and client.throttled == 0
    assert caplog.records and not any(KEY in record.getMessage() for record in caplog.records)


def test_a_permanent_outage_gives_up_after_max_retries_naming_the_path(crm, client_for):
    crm.faults.outage = True
    client = client_for(max_retries=3)
    with pytest.raises(ServerFailure) as caught:
        client.upload_inventories([stock_row("115", 1)], site="shop")
    assert INVENTORIES in str(caught.value) and "gave up after 4 attempts" in str(caught.value)
    assert crm.stats_snapshot()["by_path"][INVENTORIES] == 4
    assert client.retries == 3


def test_connections_reset_every_time_give_a_transport_failure_naming_the_path(crm, client_for):
    crm.faults.reset_rate = 1.0
    client = client_for(max_retries=2)
    with pytest.raises(TransportFailure) as caught:
        client.price_types()
    assert "/api/v5/reference/price-types" in str(caught.value) and "gave up after 3 attempts" in str(caught.value)
    assert caught.value.title == "Нет связи с retailCRM"


def test_an_answer_of_200_that_says_success_false_is_a_failure_not_an_accepted_push():
    """retailCRM tells an error by its body (RETAILCRM.md:23). A 200 whose body says it failed must not count the
    stock as delivered: it would not be sent again until it changed. The emulator never answers so, hence this server."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class ValidationFailed(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = b'{"success": false, "errorMsg": "Validation error", "errors": {"offers[0]": "Invalid value"}}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), ValidationFailed)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with RetailCrmClient(f"http://127.0.0.1:{server.server_port}", KEY, retry_base_delay=0.02) as client, \
                pytest.raises(RequestRejected, match=r"HTTP 200\): Validation error; offers\[0\]: Invalid value"):
            client.upload_inventories([stock_row("115", 1)], site="shop")
    finally:
        server.shutdown()
        server.server_close()
