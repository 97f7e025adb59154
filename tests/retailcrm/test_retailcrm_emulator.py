"""The retailCRM emulator hit directly with raw HTTP: rate limit, keys, validation, feeds, faults, CLI."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import requests

from emulator.retailcrm import RATE_LIMITED, RetailCrmEmulator

KEY = "rcrm-key"
HEADERS = {"X-API-Key": KEY}
from emulator.harness import ROOT  # noqa: E402


@pytest.fixture
def crm():
    server = RetailCrmEmulator(api_key=KEY).start()
    yield server
    server.stop()


def upload(crm, path="/store/inventories/upload", headers=HEADERS, **form):
    return requests.post(crm.api_url + path, data=form, headers=headers, timeout=5)


def offers_json(*external_ids, store="main", available=1):
    return json.dumps([{"externalId": e, "stores": [{"code": store, "available": available}]} for e in external_ids])


def test_the_eleventh_request_inside_one_second_is_refused_with_retailcrms_503(crm):
    barrier = threading.Barrier(11)
    answers = []

    def hit():
        with requests.Session() as session:
            barrier.wait()
            response = session.get(crm.api_url + "/reference/stores", headers=HEADERS, timeout=5)
            answers.append((time.monotonic(), response.status_code, response.json()))

    threads = [threading.Thread(target=hit) for _ in range(11)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    moments = sorted(moment for moment, _, _ in answers)
    if moments[-1] - moments[0] > 0.9:
        pytest.skip("the machine was too slow to land 11 requests inside one second")
    assert sorted(status for _, status, _ in answers) == [200] * 10 + [503]
    assert [body for _, status, body in answers if status == 503] == [RATE_LIMITED]
    assert crm.stats_snapshot()["rate_limited"] == 1
    other_key = requests.get(crm.api_url + "/reference/stores", headers={"X-API-Key": "someone-else"}, timeout=5)
    assert other_key.status_code == 403  # counted per key: another key is not throttled, just wrong here
    time.sleep(1.05)
    assert requests.get(crm.api_url + "/reference/stores", headers=HEADERS, timeout=5).status_code == 200


def test_key_checks_answer_retailcrms_texts(crm):
    missing = requests.get(crm.api_url + "/reference/sites", timeout=5)
    wrong = requests.get(crm.api_url + "/reference/sites", headers={"X-API-Key": "nope"}, timeout=5)
    by_query = requests.get(crm.api_url + "/reference/sites", params={"apiKey": KEY}, timeout=5)
    assert (missing.status_code, missing.json()) == (403, {"success": False, "errorMsg": '"apiKey" is missing.'})
    assert (wrong.status_code, wrong.json()) == (403, {"success": False, "errorMsg": 'Wrong "apiKey" value.'})
    assert by_query.json() == {"success": True, "sites": {"shop": {"code": "shop", "name": "shop"}}}
    crm.add_key("refs-only", methods={"/api/v5/reference/stores"})
    denied = upload(crm, headers={"X-API-Key": "refs-only"}, offers=offers_json("1"))
    assert (denied.status_code, denied.json()["errorMsg"]) == (403, "Access denied.")


def test_the_key_may_come_as_a_post_parameter_as_retailcrms_api_rules_say(crm):
    """retailCRM's API rules: the key "is transmitted in GET|POST-parameter apiKey" (or the X-API-KEY header); the old
    official PHP client (api-client-php lib/RetailCrm/Http/Client.php) sends it in the POST body."""
    crm.load_icml(b'<yml_catalog><shop><offers><offer id="1"/></offers></shop></yml_catalog>', "shop")
    in_the_form = upload(crm, headers={}, apiKey=KEY, offers=offers_json("1", available=4), site="shop")
    assert (in_the_form.status_code, in_the_form.json()["processedOffersCount"]) == (200, 1)
    assert crm.stock("shop", "1") == {"main": {"available": 4}}
    wrong = upload(crm, headers={}, apiKey="nope", offers=offers_json("1"), site="shop")
    assert (wrong.status_code, wrong.json()["errorMsg"]) == (403, 'Wrong "apiKey" value.')


def test_a_path_that_is_no_api_method_answers_method_not_found(crm):
    """api-client-go client_test.go TestGetRequest/TestPostRequest: /api/v5/fake-method → 404 "Method not found"."""
    for method in ("get", "post"):
        answer = requests.request(method, crm.api_url + "/fake-method", headers=HEADERS, timeout=5)
        assert (answer.status_code, answer.json()) == (404, {"success": False, "errorMsg": "Method not found"})


def test_credentials_answer_on_both_paths_with_the_keys_methods_and_shops(crm):
    crm.add_key("shop-only", sites={"shop"}, methods={"/api/v5/store/inventories/upload"})
    for path in ("/api/credentials", "/api/v5/credentials"):
        body = requests.get(crm.base_url + path, headers={"X-API-Key": "shop-only"}, timeout=5).json()
        assert body["siteAccess"] == "access_selective" and body["sitesAvailable"] == ["shop"]
        # listed without the version, as retailCRM does (api-client-php ApiTest testCredentials)
        assert body["credentials"] == ["/api/credentials", "/api/store/inventories/upload"]


def test_the_feed_teaches_offer_ids_and_xml_ids_of_the_vendor_example(crm, shared_fixtures):
    assert crm.load_icml(shared_fixtures / "icml" / "retailcrm-doc-example-ru.xml", "shop") == 4
    assert crm.load_icml((shared_fixtures / "icml" / "retailcrm-doc-example-en-excerpt.xml").read_bytes(), "shop") == 1
    state = requests.get(crm.base_url + "/_emulator/state", timeout=5).json()["shop"]
    assert {external_id: offer["xmlId"] for external_id, offer in state.items()} == {
        "115": "82", "116": "83", "253": "66", "56": "104"}
    assert state["115"]["id"] == 1  # the same offer seen again keeps retailCRM's number


def test_the_feed_can_be_loaded_over_http(crm, shared_fixtures):
    feed = (shared_fixtures / "icml" / "retailcrm-doc-example-ru.xml").read_bytes()
    answer = requests.post(crm.base_url + "/_emulator/icml", params={"site": "shop"}, data=feed, timeout=5)
    assert answer.json() == {"site": "shop", "offers": 4}
    assert upload(crm, offers=offers_json("253"), site="shop").json()["processedOffersCount"] == 1


def test_a_feed_with_an_external_entity_does_not_leak_the_file(crm, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET", encoding="utf-8")
    feed = (f'<?xml version="1.0"?><!DOCTYPE yml_catalog [<!ENTITY leak SYSTEM "file://{secret}">]>'
            f'<yml_catalog><shop><offers><offer id="1"><xmlId>&leak;</xmlId></offer></offers></shop></yml_catalog>')
    assert crm.load_icml(feed.encode(), "shop") == 1  # the offer is learnt: the check below is not of an empty state
    assert set(crm.state()["shop"]) == {"1"} and not crm.state()["shop"]["1"]["xmlId"]  # the entity left unread
    assert "TOP-SECRET" not in json.dumps(crm.state())


def test_uploads_over_250_malformed_or_without_offers_are_refused_and_nothing_is_stored(crm):
    crm.load_icml(b'<yml_catalog><shop><offers><offer id="1"/></offers></shop></yml_catalog>', "shop")
    too_many = upload(crm, offers=offers_json(*[str(i) for i in range(251)]), site="shop")
    malformed = upload(crm, offers='[{"externalId": "1", ', site="shop")
    missing = upload(crm, site="shop")
    assert too_many.status_code == 400 and "250" in json.dumps(too_many.json()["errors"])
    assert too_many.json()["errorMsg"] == "Errors in the entity format"
    assert malformed.status_code == 400 and "JSON" in json.dumps(malformed.json()["errors"])
    assert (missing.status_code, missing.json()["errorMsg"]) == (400, "Parameter 'offers' is missing")
    assert crm.stock("shop", "1") == {}
    assert crm.stats_snapshot()["max_upload_items"] == 251


def test_an_unknown_store_or_price_type_refuses_the_whole_batch(crm):
    crm.load_icml(b'<yml_catalog><shop><offers><offer id="1"/><offer id="2"/></offers></shop></yml_catalog>', "shop")
    offers = json.dumps([{"externalId": "1", "stores": [{"code": "main", "available": 3}]},
                         {"externalId": "2", "stores": [{"code": "kazan", "available": 3}]}])
    refused = upload(crm, offers=offers, site="shop")
    assert refused.status_code == 400
    assert refused.json()["errors"] == {"offers[1][stores][0][code]": 'Store with code "kazan" not found'}
    prices = json.dumps([{"externalId": "1", "site": "shop", "prices": [{"code": "vip", "price": 5}]}])
    refused_prices = upload(crm, "/store/prices/upload", prices=prices)
    assert refused_prices.status_code == 400 and "vip" in json.dumps(refused_prices.json()["errors"])
    assert crm.stock("shop", "1") == {} and crm.prices("shop", "1") == {}


def test_offers_named_by_external_id_need_the_site_only_from_a_key_that_reaches_several_shops(crm):
    """RETAILCRM.md:34-35, :45: site is needed when offers are matched by externalId/xmlId (unique per shop), and
    retailCRM's API rules say when: "If API-key gives access to data of several stores, then in some API-methods
    additionally required specify symbolic code of store in GET|POST-parameter site"."""
    crm.load_icml(b'<yml_catalog><shop><offers><offer id="1"/></offers></shop></yml_catalog>', "shop")
    stock = upload(crm, offers=offers_json("1", available=2))  # an account of one shop: that shop
    prices = upload(crm, "/store/prices/upload", prices=json.dumps([{"externalId": "1", "prices": [{"code": "base", "price": 5}]}]))
    assert [(a.status_code, a.json()["processedOffersCount"]) for a in (stock, prices)] == [(200, 1)] * 2
    assert crm.stock("shop", "1") == {"main": {"available": 2}} and crm.prices("shop", "1") == {"base": 5}


def test_a_key_of_several_shops_must_name_the_site_and_a_key_limited_to_one_need_not():
    crm = RetailCrmEmulator(api_key=KEY, sites=("shop", "other")).start()
    try:
        crm.load_icml(b'<yml_catalog><shop><offers><offer id="1"/></offers></shop></yml_catalog>', "shop")
        stock = upload(crm, offers=offers_json("1"))
        prices = upload(crm, "/store/prices/upload",
                        prices=json.dumps([{"externalId": "1", "prices": [{"code": "base", "price": 5}]}]))
        assert [(a.status_code, a.json()["errorMsg"]) for a in (stock, prices)] == [(400, "Parameter 'site' is missing")] * 2
        assert crm.stock("shop", "1") == {} and crm.prices("shop", "1") == {}
        crm.add_key("shop-only", sites={"shop"})
        limited = upload(crm, offers=offers_json("1", available=6), headers={"X-API-Key": "shop-only"})
        assert limited.json()["processedOffersCount"] == 1 and crm.stock("shop", "1") == {"main": {"available": 6}}
    finally:
        crm.stop()


def test_an_upload_answers_processed_and_not_found_offers(crm):
    crm.load_icml(b'<yml_catalog><shop><offers><offer id="1"><xmlId>x1</xmlId></offer></offers></shop></yml_catalog>',
                  "shop")
    offers = json.dumps([{"xmlId": "x1", "stores": [{"code": "spb", "available": 7, "purchasePrice": 50}]},
                         {"id": 999, "stores": []}, {"externalId": "nope", "stores": []}])
    answer = upload(crm, offers=offers, site="shop")
    assert answer.json() == {"success": True, "processedOffersCount": 1,
                             "notFoundOffers": [{"id": 999}, {"externalId": "nope"}]}
    assert crm.stock("shop", "1") == {"spb": {"available": 7, "purchasePrice": 50}}


def test_an_offer_named_by_retailcrms_own_id_needs_no_site():
    """retailCRM's id is one number in the account; site is needed only for externalId/xmlId (RETAILCRM.md:34-35)."""
    crm = RetailCrmEmulator(api_key=KEY, sites=("shop", "other")).start()
    try:
        crm.load_icml(b'<yml_catalog><shop><offers><offer id="1"/></offers></shop></yml_catalog>', "shop")
        offer_id = crm.state()["shop"]["1"]["id"]
        answer = upload(crm, offers=json.dumps([{"id": offer_id, "stores": [{"code": "main", "available": 3}]}]))
        assert answer.json() == {"success": True, "processedOffersCount": 1, "notFoundOffers": []}
        prices = json.dumps([{"id": offer_id, "prices": [{"code": "base", "price": 10}]}])
        assert upload(crm, "/store/prices/upload", prices=prices).json()["processedOffersCount"] == 1
        assert crm.stock("shop", "1") == {"main": {"available": 3}} and crm.prices("shop", "1") == {"base": 10}
        by_external_id = upload(crm, offers=offers_json("1"))  # which shop's "1"? (the key reaches two)
        assert by_external_id.status_code == 400 and by_external_id.json()["errorMsg"] == "Parameter 'site' is missing"

        crm.load_icml(b'<yml_catalog><shop><offers><offer id="2"/></offers></shop></yml_catalog>', "other")
        crm.add_key("shop-only", sites={"shop"})  # one offer of a shop the key may not use refuses the whole batch
        mixed = json.dumps([{"id": offer_id, "stores": [{"code": "main", "available": 9}]},
                            {"id": crm.state()["other"]["2"]["id"], "stores": [{"code": "main", "available": 9}]}])
        refused = upload(crm, offers=mixed, headers={"X-API-Key": "shop-only"})
        assert refused.status_code == 403 and crm.stock("shop", "1") == {"main": {"available": 3}}
    finally:
        crm.stop()


def test_fault_switches_over_http(crm):
    def switch(**values):
        return requests.post(crm.base_url + "/_emulator/faults", json=values, timeout=5)

    assert switch(outage=True).json()["outage"] is True
    down = requests.get(crm.api_url + "/reference/stores", headers=HEADERS, timeout=5)
    assert down.status_code == 503 and down.headers["Content-Type"] == "text/html"
    switch(outage=False, error_rate=1.0, seed=3)
    injected = {requests.get(crm.api_url + "/reference/stores", headers=HEADERS, timeout=5).status_code
                for _ in range(8)}
    assert injected <= {500, 502, 503} and len(injected) > 1
    switch(error_rate=0.0, latency_ms=300)
    start = time.monotonic()
    assert requests.get(crm.api_url + "/reference/stores", headers=HEADERS, timeout=5).status_code == 200
    assert time.monotonic() - start >= 0.3
    assert switch(truncate_everything=True).status_code == 400
    switch(reset_rate=1.0, latency_ms=0)
    with pytest.raises(requests.ConnectionError):
        requests.get(crm.api_url + "/reference/stores", headers=HEADERS, timeout=5)


def test_the_cli_serves_until_interrupted_and_prints_its_url_and_key(tmp_path, shared_fixtures):
    config = tmp_path / "config.yaml"
    config.write_text("data_dir: data\nmoysklad:\n  base_url: http://127.0.0.1:9/api/remap/1.2\n"
                      "feeds:\n  - name: main\n", encoding="utf-8")
    env = dict(os.environ, SKLADBRIDGE_CONFIG=str(config), MOYSKLAD_TOKEN="unused")
    feed = shared_fixtures / "icml" / "retailcrm-doc-example-ru.xml"
    process = subprocess.Popen([sys.executable, "-m", "flask", "--app", "app", "emulator", "retailcrm", "--port", "0",
                                "--api-key", "cli-key", "--site", "b2c", "--site", "b2b", "--icml", str(feed)],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first, second, third = (process.stdout.readline() for _ in range(3))
        url = first.split("retailCRM emulator: ")[1].split()[0]
        assert "cli-key" in second and "b2c, b2b" in second
        assert third.strip().startswith("4 offers")
        credentials = requests.get(url + "/api/credentials", headers={"X-API-Key": "cli-key"}, timeout=5)
        assert credentials.status_code == 200
        assert set(requests.get(url + "/_emulator/state", timeout=5).json()["b2c"]) == {"115", "116", "253", "56"}
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode == 0
