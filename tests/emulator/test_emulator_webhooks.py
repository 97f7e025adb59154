"""Webhooks of the emulator: registration over HTTP, and notifications POSTed to a real receiver."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from tests.emulator.test_emulator import AUTH, error_code, serving


class Receiver:
    """A webhook receiver on loopback: keeps (path, JSON body) of every POST, answers `statuses` in turn."""

    def __init__(self, statuses=(200,), delay: float = 0.0):
        self.requests = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.requests.append((self.path, body))
                time.sleep(delay)
                status = statuses[min(len(receiver.requests), len(statuses)) - 1]
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"

    @property
    def bodies(self) -> list:
        return [body for _, body in self.requests]

    def wait_for(self, count: int, timeout: float = 5.0) -> list:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.requests) >= count, self.requests
        return self.bodies

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def emulator():
    """Stock batches every 0.2 s and a 0.3 s answer timeout, so tests need not wait minutes."""
    yield from serving(80, 6, webhook_interval=0.2, webhook_timeout=0.3)


@pytest.fixture
def receiver():
    target = Receiver()
    yield target
    target.stop()


def post(srv, kind, body):
    return requests.post(f"{srv.base_url}/entity/{kind}", headers=AUTH, json=body)


def subscribe(srv, kind, **body):
    response = post(srv, kind, body)
    assert response.status_code == 200, response.text
    return response.json()


def request_id(path: str) -> str:
    return parse_qs(urlsplit(path).query)["requestId"][0]


def test_webhooks_are_kept_per_account_over_http(emulator, receiver):
    created = subscribe(emulator, "webhook", url=receiver.url, action="CREATE", entityType="product")
    assert (created["method"], created["enabled"], created["accountId"]) == ("POST", True, emulator.catalog.ids.account)
    assert "diffType" not in created
    update = subscribe(emulator, "webhook", url=receiver.url, action="UPDATE", entityType="variant")
    assert update["diffType"] == "NONE"  # doc: default NONE, shown for UPDATE
    listed = requests.get(f"{emulator.base_url}/entity/webhook", headers=AUTH).json()
    assert listed["meta"]["size"] == 2 and {r["id"] for r in listed["rows"]} == {created["id"], update["id"]}
    one = f"{emulator.base_url}/entity/webhook/{created['id']}"
    assert requests.get(one, headers=AUTH).json() == created
    changed = requests.put(one, headers=AUTH, json={"enabled": False}).json()
    assert changed["enabled"] is False and changed["url"] == receiver.url
    deleted = requests.delete(one, headers=AUTH)
    assert deleted.status_code == 200 and deleted.content == b""
    assert error_code(requests.get(one, headers=AUTH)) == 1021
    several = post(emulator, "webhook", [{"url": receiver.url, "action": "DELETE", "entityType": "product"},
                                         {"url": receiver.url, "action": "CREATE", "entityType": "bundle"}])
    assert [r["entityType"] for r in several.json()] == ["product", "bundle"]
    stock = subscribe(emulator, "webhookstock", url=receiver.url, stockType="stock", reportType="bystore")
    assert requests.get(f"{emulator.base_url}/entity/webhookstock", headers=AUTH).json()["rows"] == [stock]
    assert requests.patch(one, headers=AUTH, json={}).status_code == 405


@pytest.mark.parametrize("kind,body,status,code", [
    ("webhook", {"action": "CREATE", "entityType": "product"}, 412, 3000),
    ("webhook", {"url": "http://example.com/h", "action": "TOUCH", "entityType": "product"}, 412, 3005),
    ("webhook", {"url": "http://example.com/h", "action": "CREATE", "entityType": "webhook"}, 412, 3005),
    ("webhook", {"url": "http://example.com/h", "action": "CREATE", "entityType": "discount"}, 412, 3005),
    ("webhook", {"url": "http://example.com/h", "action": "PROCESSED", "entityType": "product"}, 412, 3005),
    ("webhook", {"url": "http://example.com/h", "action": "UPDATE", "entityType": "product", "diffType": "ALL"},
     412, 3005),
    ("webhook", {"url": "http://example.com/h", "action": "CREATE", "entityType": "product", "method": "GET"},
     412, 3005),
    ("webhook", {"url": "ftp://example.com/h", "action": "CREATE", "entityType": "product"}, 412, 3016),
    ("webhook", {"url": "http://example.com/" + "x" * 250, "action": "CREATE", "entityType": "product"}, 412, 3016),
    ("webhook", {"url": "http://example.com/h", "action": "CREATE", "entityType": "product", "enabled": "yes"},
     400, 2016),
    ("webhookstock", {"url": "http://example.com/h", "stockType": "freeStock", "reportType": "all"}, 412, 3005),
    ("webhookstock", {"url": "http://example.com/h", "stockType": "stock"}, 412, 3000),
    ("webhookstock", {"url": "http://example.com/h", "stockType": "stock", "reportType": "byslot"}, 412, 3005),
])
def test_webhook_bodies_are_validated(emulator, kind, body, status, code):
    response = post(emulator, kind, body)
    assert (response.status_code, error_code(response)) == (status, code)


def test_webhook_combinations_are_unique_and_limited_to_five(emulator):
    first = {"url": "http://example.com/0", "action": "CREATE", "entityType": "product"}
    subscribe(emulator, "webhook", **first)
    assert error_code(post(emulator, "webhook", first)) == 3006
    for n in range(1, 5):
        subscribe(emulator, "webhook", **dict(first, url=f"http://example.com/{n}"))
    sixth = post(emulator, "webhook", dict(first, url="http://example.com/5"))
    assert sixth.status_code == 412 and error_code(sixth) == 3006
    subscribe(emulator, "webhook", **dict(first, url="http://example.com/5", action="DELETE"))
    not_json = requests.post(f"{emulator.base_url}/entity/webhook", headers=AUTH, data=b"{url")
    assert not_json.status_code == 400 and error_code(not_json) == 2001


def test_entity_webhooks_follow_catalog_changes(emulator, receiver):
    catalog = emulator.catalog
    other = Receiver()
    try:
        subscribe(emulator, "webhook", url=receiver.url, action="UPDATE", entityType="product", diffType="FIELDS")
        subscribe(emulator, "webhook", url=other.url, action="UPDATE", entityType="product")
        subscribe(emulator, "webhook", url=receiver.url, action="CREATE", entityType="variant")
        subscribe(emulator, "webhook", url=receiver.url, action="DELETE", entityType="product")
        off = subscribe(emulator, "webhook", url=other.url, action="CREATE", entityType="product")
        requests.put(f"{emulator.base_url}/entity/webhook/{off['id']}", headers=AUTH, json={"enabled": False})
        product = next(i for i in catalog.items.values() if i.kind == "product")
        catalog.update_item(product.id, name="Новое имя", sale_price=100.0)
        new_id = catalog.add_product(name="Новинка", price_kopecks=500.0, variants=2)
        catalog.delete_item(product.id)
        assert emulator.webhooks.wait_idle()
        updated, created, deleted = receiver.wait_for(3)
        assert updated["events"] == [{
            "meta": {"type": "product", "href": f"{emulator.base_url}/entity/product/{product.id}"},
            "updatedFields": ["name", "salePrices"], "action": "UPDATE", "accountId": catalog.ids.account}]
        assert updated["auditContext"]["uid"] == emulator.login
        assert updated["auditContext"]["meta"]["type"] == "audit"
        variants = catalog.items[new_id].variant_ids
        assert [e["meta"]["href"].rsplit("/", 1)[-1] for e in created["events"]] == variants
        assert {e["action"] for e in created["events"]} == {"CREATE"}
        assert [(e["action"], e["meta"]["type"]) for e in deleted["events"]] == [("DELETE", "product")]
        assert "updatedFields" not in other.wait_for(1)[0]["events"][0]  # diffType NONE
        time.sleep(0.1)
        assert len(other.requests) == 1  # the disabled CREATE hook sent nothing
        assert all(request_id(path) for path, _ in receiver.requests)
    finally:
        other.stop()


def test_failed_notifications_are_tried_three_more_times_with_one_request_id(emulator):
    failing = Receiver(statuses=(500,))
    slow = Receiver(delay=0.6)
    try:
        subscribe(emulator, "webhook", url=failing.url, action="UPDATE", entityType="product")
        subscribe(emulator, "webhook", url=slow.url, action="UPDATE", entityType="product")
        product = next(i for i in emulator.catalog.items.values() if i.kind == "product")
        emulator.catalog.update_item(product.id, name="Ещё раз")
        assert emulator.webhooks.wait_idle()
        assert len(failing.requests) == 4 and len({request_id(p) for p, _ in failing.requests}) == 1
        attempts = [d for d in emulator.webhooks.deliveries if d["url"].startswith(failing.url)]
        assert [(d["attempt"], d["status"], d["ok"]) for d in attempts] == [(n, 500, False) for n in range(1, 5)]
        late = [d for d in emulator.webhooks.deliveries if d["url"].startswith(slow.url)]
        assert len(late) == 4 and not any(d["ok"] for d in late)  # no answer within the timeout
        assert all(d["elapsed"] >= 0.3 for d in late)
    finally:
        failing.stop()
        slow.stop()


def test_stock_webhooks_come_in_batches_with_a_report_url(emulator, receiver):
    catalog = emulator.catalog
    subscribe(emulator, "webhookstock", url=receiver.url, stockType="stock", reportType="all")
    subscribe(emulator, "webhookstock", url=receiver.url, stockType="stock", reportType="bystore")
    goods = [i for i in catalog.items.values() if i.operated and not i.archived][:2]
    store = catalog.stores[0]
    before = {item.id: sum(item.stock[0::3]) for item in goods}  # all stores' stock, read before the change
    time.sleep(0.25)  # start at a batch boundary
    for item in goods:
        catalog.set_stock(item.id, store.id, stock=item.stock[0] + 7)
    bodies = receiver.wait_for(2)
    time.sleep(0.5)
    assert len(receiver.requests) == 2  # one batch: one notification per stock webhook
    assert {b["reportType"] for b in bodies} == {"all", "bystore"}
    for body in bodies:
        assert set(body) == {"accountId", "stockType", "reportType", "reportUrl"} and body["stockType"] == "stock"
        assert f"/report/stock/{body['reportType']}/current?changedSince=" in body["reportUrl"]
        rows = requests.get(body["reportUrl"], headers=AUTH).json()
        assert {row["assortmentId"] for row in rows} == {item.id for item in goods}
    current = {r["assortmentId"]: r["stock"] for r in requests.get(
        next(b["reportUrl"] for b in bodies if b["reportType"] == "all"), headers=AUTH).json()}
    assert current == {good: stock + 7 for good, stock in before.items()}
    catalog.set_stock(goods[0].id, store.id, reserve=1)  # only the reserve: stockType "stock" did not change
    time.sleep(0.5)
    assert len(receiver.requests) == 2
    deliveries = emulator.webhooks.deliveries
    assert len(deliveries) == 2 and all(d["ok"] and d["status"] == 200 for d in deliveries)


@pytest.fixture
def hourly():
    """Stock batches an hour apart: only an explicit flush sends one."""
    yield from serving(40, 7, webhook_interval=3600)


def test_control_endpoint_shows_webhooks_and_flushes_a_stock_batch(hourly, receiver):
    """Out of process (gunicorn e2e), /_emulator/webhooks is how a test sees and hurries the notifications."""
    srv = hourly
    subscribe(srv, "webhookstock", url=receiver.url, stockType="stock", reportType="all")
    item = next(i for i in srv.catalog.items.values() if i.operated and not i.archived)
    before = sum(item.stock[0::3])
    srv.catalog.set_stock(item.id, srv.catalog.stores[0].id, stock=item.stock[0] + 1)
    assert requests.post(srv.origin + "/_emulator/webhooks/flush").json() == {"queued": 1}
    report_url = receiver.wait_for(1)[0]["reportUrl"]
    assert {r["assortmentId"]: r["stock"] for r in requests.get(report_url, headers=AUTH).json()} == {item.id: before + 1}
    assert srv.webhooks.wait_idle()
    state = requests.get(srv.origin + "/_emulator/webhooks").json()
    assert len(state["webhookstock"]) == 1 and state["webhook"] == []
    assert [(d["kind"], d["status"]) for d in state["deliveries"]] == [("webhookstock", 200)]
