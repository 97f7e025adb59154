"""Orders over real HTTP on loopback: the JSON API in, type=sale out to a client that behaves like 1C, statuses back."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import sqlite3
import time

import pytest
import requests
from lxml import etree

from core.clock import MOSCOW
from core.settings import ApiSettings
from exchange.orders import parse_status_document
from store import CatalogStore
from tests.exchange.test_exchange import OneC, exchange_settings, fixture, sessions
from tests.orders.test_orders import (KG, PIECES, XXE, assert_schema_valid, child_text, children, documents,
                                      order_document, order_payload, requisite, requisites, status_document, units_sent)

API_KEY = "test-api-key-0123456789abcdef"


def sale_settings(tmp_path, key: str = API_KEY, **exchange):
    return dataclasses.replace(exchange_settings(tmp_path, **exchange), api=ApiSettings(key=key, max_body_bytes=64 * 1024))


class Api:
    """A shop's backend calling the orders API."""

    def __init__(self, base: str, key: str | None = API_KEY):
        self.base = base
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    def post(self, payload, **kwargs) -> requests.Response:
        kwargs.setdefault("headers", self.headers)
        return requests.post(f"{self.base}/api/orders", json=payload, timeout=10, **kwargs)

    def get(self, number: str) -> requests.Response:
        return requests.get(f"{self.base}/api/orders/{number}", headers=self.headers, timeout=10)

    def order(self, number: str) -> dict:
        response = self.get(number)
        assert response.status_code == 200, response.text
        return response.json()


class Sale(OneC):
    """1C's side of the order exchange: type=sale on every call; the query answer is XML, not text."""

    def call(self, mode: str, method: str = "GET", data=None, kind: str = "sale", **params) -> list[str]:
        return super().call(mode, method, data, kind, **params)

    def query(self) -> requests.Response:
        response = requests.get(self.url, params={"type": "sale", "mode": "query"}, timeout=30,
                                headers={"Cookie": f"{self.cookie[0]}={self.cookie[1]}"})
        assert response.status_code == 200
        return response

    def login(self) -> "Sale":
        assert self.checkauth()[0] == "success"
        self.init()
        return self


@pytest.fixture
def app_settings(tmp_path):
    """The app of conftest's ``live_app``: exchange login and an API key, no MoySklad needed."""
    return sale_settings(tmp_path)


@pytest.fixture
def base(live_app):
    return live_app


# --- the whole round trip -------------------------------------------------------------------------

def test_orders_round_trip_through_1c(tmp_path, serve):
    settings = sale_settings(tmp_path)
    base = serve(settings)
    api = Api(base)
    company = api.post(order_payload("A-1"))
    assert company.status_code == 201 and company.headers["Location"] == "/api/orders/A-1"
    assert company.json()["result"] == "created" and company.json()["total"] == "4355.93"
    person = order_payload("A-2", customer={"name": "Анна Смирнова", "phone": "+7 912 000-00-01", "address": "Тула, ул. Мира, 3"},
                           delivery={"method": "Самовывоз"}, paid=False)
    assert api.post(person).status_code == 201

    client = Sale(base)
    assert client.checkauth()[0] == "success"
    assert client.init()["zip"] == "no"  # status documents come plain, whatever exchange.zip says
    response = client.query()
    assert response.headers["Content-Type"] == "text/xml; charset=windows-1251"
    assert response.content.startswith(b'<?xml version="1.0" encoding="windows-1251"?>')
    response.content.decode("cp1251")
    sent = documents(response.content)
    assert [child_text(doc, "Номер") for doc in sent] == ["A-1", "A-2"]
    for doc in sent:
        for tag in ("Ид", "Номер", "Дата", "ХозОперация", "Роль", "Валюта", "Курс", "Сумма", "Контрагенты/Контрагент/Ид",
                    "Контрагенты/Контрагент/Наименование", "Контрагенты/Контрагент/Роль", "Время"):
            assert child_text(doc, tag), tag
        assert (child_text(doc, "ХозОперация"), child_text(doc, "Роль"), child_text(doc, "Валюта")) == ("Заказ товара", "Продавец", "руб")
        for good in children(children(doc, "Товары")[0], "Товар"):
            assert all(child_text(good, tag) for tag in ("Ид", "Наименование", "ЦенаЗаЕдиницу", "Количество", "Сумма"))
        assert "Метод оплаты" in requisites(doc)
    assert child_text(sent[0], "Сумма") == api.order("A-1")["total"]
    assert child_text(sent[1], "Контрагенты/Контрагент/АдресРегистрации/Представление") == "Тула, ул. Мира, 3"
    assert [u.number for u in parse_status_document(response.content, "query.xml").updates] == ["A-1", "A-2"]
    assert client.call("success") == ["success"]
    assert documents(client.query().content) == []  # confirmed: not sent again

    back = status_document(
        order_document("A-1", **{"Статус заказа": "Отгружен", "Дата оплаты по 1С": "2024-05-02T10:15:00",
                                 "Дата отгрузки по 1С": "03.05.2024 18:00:00", "Проведен": "true"}),
        order_document("A-2", Отменен="true", ПометкаУдаления="true", Проведен="false"),
        order_document("777", **{"Статус заказа": "Отгружен"}))
    assert client.send("orders-2024-05-03.xml", back) == ["success"]
    assert client.call("import", filename="orders-2024-05-03.xml") == ["success"]
    assert client.call("complete") == ["success"]

    shipped = api.order("A-1")
    assert (shipped["status"], shipped["paid_at"], shipped["shipped_at"], shipped["posted"]) == (
        "Отгружен", "2024-05-02T10:15:00", "2024-05-03T18:00:00", True)
    assert (shipped["exported_revision"], shipped["cancelled"]) == (1, False)
    history = [(h["source"], h["field"], h["old"], h["new"]) for h in shipped["history"]]
    assert history == [("api", "created", None, "1"), ("exchange", "exported", None, "1"),
                       ("exchange", "status", None, "Отгружен"), ("exchange", "paid_at", None, "2024-05-02T10:15:00"),
                       ("exchange", "shipped_at", None, "2024-05-03T18:00:00"), ("exchange", "posted", "false", "true")]
    assert all("file orders-2024-05-03.xml" in h["detail"] for h in shipped["history"][2:])
    cancelled = api.order("A-2")
    assert (cancelled["cancelled"], cancelled["deleted"], cancelled["posted"]) == (True, True, False)
    assert [h["field"] for h in cancelled["history"]] == ["created", "exported", "cancelled", "deleted"]

    [logged] = sessions(settings)
    assert logged["result"] == "ok"
    [entry] = logged["files"]
    assert entry["name"] == "orders-2024-05-03.xml" and entry["import"]["status"] == "ok"
    assert entry["import"]["results"]["skipped"] == ["заказ № 777 не найден на сайте"]
    assert entry["import"]["results"]["orders_changed"] == 2


@pytest.mark.parametrize("fmt, content_type, start", [
    ("2.05-cp1251", "text/xml; charset=windows-1251", b'<?xml version="1.0" encoding="windows-1251"?>\n<\xca\xee\xec'),
    ("2.05-utf8", "text/xml; charset=utf-8", b'\xef\xbb\xbf<?xml version="1.0" encoding="UTF-8"?>\n<\xd0\x9a'),
    ("3.1", "text/xml; charset=utf-8", b'\xef\xbb\xbf<?xml version="1.0" encoding="UTF-8"?>\n<\xd0\x9a'),
])
def test_each_format_over_http(tmp_path, serve, fmt, content_type, start):
    base = serve(sale_settings(tmp_path, orders_format=fmt))
    assert Api(base).post(order_payload("A-1", comment="Подарок 🎁")).status_code == 201
    response = Sale(base).login().query()
    assert response.headers["Content-Type"] == content_type
    assert response.content.startswith(start)
    root = etree.fromstring(response.content)
    assert root.get("ВерсияСхемы") == ("3.1" if fmt == "3.1" else "2.05")
    assert bool(children(root, "Контейнер")) == (fmt == "3.1")
    [doc] = documents(response.content)
    assert child_text(doc, "Комментарий") == "Подарок 🎁"
    if fmt == "2.05-cp1251":
        assert b"&#127873;" in response.content


def test_a_query_without_success_is_sent_again_and_success_marks_only_what_was_sent(base):
    api = Api(base)
    api.post(order_payload("A-1"))
    first = Sale(base).login()
    assert [child_text(d, "Номер") for d in documents(first.query().content)] == ["A-1"]
    first.call("complete")  # 1C gave up before success
    second = Sale(base).login()
    assert [child_text(d, "Номер") for d in documents(second.query().content)] == ["A-1"]
    api.post(order_payload("A-2"))  # arrives between the query and its success
    assert second.call("success") == ["success"]
    third = Sale(base).login()
    assert [child_text(d, "Номер") for d in documents(third.query().content)] == ["A-2"]
    assert api.order("A-1")["exported_revision"] == 1 and api.order("A-2")["exported_revision"] is None


def test_orders_1c_takes_and_never_confirms_are_a_problem_naming_the_blocked_limit(tmp_path, serve):
    """Each query sends the oldest orders 1C has not confirmed: while 1C fails on them, newer orders past
    orders_per_query never reach 1C. Three unconfirmed queries in a row fail /healthz until 1C confirms one."""
    base = serve(sale_settings(tmp_path, orders_per_query=2))
    api = Api(base)
    for number in ("S-1", "S-2", "S-3"):
        api.post(order_payload(number))
    for attempt in range(3):
        assert requests.get(base + "/healthz", timeout=10).status_code == 200, attempt  # not yet: once can be a cut
        sale = Sale(base).login()
        assert [child_text(d, "Номер") for d in documents(sale.query().content)] == ["S-1", "S-2"]
        sale.call("complete")  # 1C could not load them and said no success
    reply = requests.get(base + "/healthz", timeout=10)
    assert reply.status_code == 503
    assert ("обмен с 1С: 3 запроса заказов подряд 1С не подтвердила (mode=success) — она не может загрузить эти заказы; "
            "заказы сверх первых 2 (exchange.orders_per_query) в 1С не уходят") in reply.text
    sale = Sale(base).login()
    sale.query()
    assert sale.call("success") == ["success"]
    assert requests.get(base + "/healthz", timeout=10).status_code == 200


def test_a_changed_order_goes_to_1c_again_and_keeps_its_statuses(base):
    api = Api(base)
    api.post(order_payload("A-1"))
    client = Sale(base).login()
    client.query()
    client.call("success")
    assert client.send("st.xml", status_document(order_document("A-1", **{"Статус заказа": "В работе"}))) == ["success"]
    changed = api.post(order_payload("A-1", comment="Доставить после 18:00"))
    assert (changed.status_code, changed.json()["result"], changed.json()["revision"]) == (200, "updated", 2)
    [doc] = documents(client.query().content)
    assert child_text(doc, "Комментарий") == "Доставить после 18:00"
    assert requisites(doc)["Статус заказа"] == "В работе"
    assert api.order("A-1")["status"] == "В работе"


def test_the_shop_cancels_an_order_1c_has_confirmed_and_1c_gets_it_again(base):
    api = Api(base)
    api.post(order_payload("A-1"))
    api.post(order_payload("A-2"))
    client = Sale(base).login()
    client.query()
    client.call("success")
    assert client.send("st.xml", status_document(order_document("A-1", **{"Статус заказа": "В работе"}))) == ["success"]
    cancelled = api.post(order_payload("A-1", cancelled=True, status="Отменён покупателем"))
    assert (cancelled.status_code, cancelled.json()["result"], cancelled.json()["revision"]) == (200, "updated", 2)
    assert (cancelled.json()["cancelled"], cancelled.json()["status"]) == (True, "Отменён покупателем")
    assert cancelled.json()["history"][-1]["detail"] == "revision 2: status, cancelled"
    [doc] = documents(client.query().content)  # A-2 stays confirmed
    assert child_text(doc, "Номер") == "A-1"
    assert (requisites(doc)["Отменен"], requisites(doc)["Статус заказа"]) == ("true", "Отменён покупателем")
    client.call("success")
    again = api.post(order_payload("A-1", cancelled=True, status="Отменён покупателем"))
    assert (again.json()["result"], documents(client.query().content)) == ("unchanged", [])
    kept = api.post(order_payload("A-2", comment="Без звонка"))  # no cancelled or status: 1C's word stays
    assert (kept.json()["result"], kept.json()["cancelled"], kept.json()["status"]) == ("updated", False, None)


def test_a_status_file_sent_in_chunks_is_applied_when_complete(tmp_path, serve):
    base = serve(sale_settings(tmp_path, file_limit=1024))
    Api(base).post(order_payload("A-1"))
    filler = "".join(order_document(f"X-{n}", **{"Статус заказа": "Чужой"}) for n in range(20))
    data = status_document(filler, order_document("A-1", **{"Статус заказа": "Собран"}))
    assert len(data) > 3 * 1024
    client = Sale(base).login()
    assert client.file_limit == 1024
    assert client.send("big.xml", data) == ["success"]  # every chunk answered success; applied with the last
    assert Api(base).order("A-1")["status"] == "Собран"
    assert client.call("import", filename="big.xml") == ["success"]


def test_1c_empty_dates_written_as_t_or_blank_clear_the_date_and_the_file_is_applied(base):
    """1C writes an empty date as «T» (or leaves it blank): no date, like 0001-01-01, not a refused file."""
    api = Api(base)
    api.post(order_payload("A-1"))
    api.post(order_payload("A-2"))
    client = Sale(base).login()
    shipped = status_document(order_document("A-1", **{"Дата отгрузки по 1С": "2024-05-03T18:00:00"}))
    assert client.send("st-1.xml", shipped) == ["success"]
    back = status_document(
        order_document("A-1", **{"Статус заказа": "Собран", "Дата отгрузки по 1С": "T", "Дата оплаты по 1С": " "}),
        order_document("A-2", **{"Статус заказа": "В работе", "Дата оплаты по 1С": "", "Дата отгрузки по 1С": " T "}))
    assert client.send("st-2.xml", back) == ["success"]
    assert client.call("import", filename="st-2.xml") == ["success"]
    first, second = api.order("A-1"), api.order("A-2")
    assert (first["status"], first["shipped_at"], first["paid_at"]) == ("Собран", None, None)
    assert (second["status"], second["shipped_at"], second["paid_at"]) == ("В работе", None, None)


def test_paid_and_shipped_flags_mark_the_order_like_the_dates_do(base):
    """«Оплачен» / «Отгружен» = true: paid / shipped when the file was written, unless a date says when or one is
    recorded; false clears it. Requisites may also sit right in the Документ, without ЗначенияРеквизитов."""
    api = Api(base)
    for number in ("A-1", "A-2", "A-3"):
        api.post(order_payload(number))
    client = Sale(base).login()
    bare = ("<Документ><Ид>A-3</Ид><Номер>A-3</Номер><ХозОперация>Заказ товара</ХозОперация>"
            + requisite("Статус заказа", "Отгружен") + requisite("Отгружен", "Да") + "</Документ>")
    first = status_document(order_document("A-1", Оплачен="true", Отгружен="Да"),
                            order_document("A-2", **{"Оплачен": "true", "Дата оплаты по 1С": "2024-05-02T10:15:00"}), bare)
    assert 'ДатаФормирования="2024-05-03T10:00:00"'.encode("cp1251") in first
    assert client.send("st-1.xml", first) == ["success"]
    assert [(o["paid_at"], o["shipped_at"]) for o in map(api.order, ("A-1", "A-2"))] == [
        ("2024-05-03T10:00:00", "2024-05-03T10:00:00"), ("2024-05-02T10:15:00", None)]
    assert (api.order("A-3")["status"], api.order("A-3")["shipped_at"]) == ("Отгружен", "2024-05-03T10:00:00")
    later = status_document(order_document("A-1", Оплачен="true", Отгружен="false")).replace(
        "2024-05-03T10:00:00".encode(), b"2024-05-09T08:00:00")
    assert client.send("st-2.xml", later) == ["success"]
    again = api.order("A-1")
    assert (again["paid_at"], again["shipped_at"]) == ("2024-05-03T10:00:00", None)  # the first word on paying stays
    assert [(h["field"], h["new"]) for h in again["history"][1:]] == [
        ("paid_at", "2024-05-03T10:00:00"), ("shipped_at", "2024-05-03T10:00:00"), ("shipped_at", None)]


def test_a_paid_flag_in_a_file_without_its_time_is_stamped_with_the_exchange_moscow_time(base):
    Api(base).post(order_payload("A-1"))
    data = status_document(order_document("A-1", Оплачен="1")).replace(b"2024-05-03T10:00:00", b"2024-05-03")
    before = dt.datetime.now(MOSCOW).replace(tzinfo=None, microsecond=0)
    assert Sale(base).login().send("st.xml", data) == ["success"]
    after = dt.datetime.now(MOSCOW).replace(tzinfo=None)
    assert before <= dt.datetime.fromisoformat(Api(base).order("A-1")["paid_at"]) <= after


@pytest.fixture
def server_clock_in_utc(monkeypatch):
    """The process's local clock on UTC, as on a server: whatever goes to 1C must still be Moscow time."""
    monkeypatch.setenv("TZ", "UTC0")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_order_dates_go_to_1c_on_moscow_wall_clock(base, server_clock_in_utc):
    api = Api(base)
    assert api.post(order_payload("A-1", date="2024-05-01T22:30:00Z")).status_code == 201
    assert api.post(order_payload("A-2", date="2024-05-01T12:30:00")).status_code == 201  # the shop's own wall clock
    assert api.post(order_payload("A-3", date="2024-05-01T12:30:00+05:00")).status_code == 201
    before = dt.datetime.now(MOSCOW).replace(tzinfo=None, microsecond=0)
    assert api.post(order_payload("A-4", date=None)).status_code == 201
    response = Sale(base).login().query()
    after = dt.datetime.now(MOSCOW).replace(tzinfo=None)
    sent = {child_text(doc, "Номер"): (child_text(doc, "Дата"), child_text(doc, "Время"))
            for doc in documents(response.content)}
    assert (sent["A-1"], sent["A-2"], sent["A-3"]) == (("2024-05-02", "01:30:00"), ("2024-05-01", "12:30:00"),
                                                       ("2024-05-01", "10:30:00"))
    assert [api.order(n)["date"] for n in ("A-1", "A-2", "A-3")] == [
        "2024-05-02T01:30:00", "2024-05-01T12:30:00", "2024-05-01T10:30:00"]
    stamped = dt.datetime.fromisoformat(" ".join(sent["A-4"]))
    assert before <= stamped <= after and api.order("A-4")["date"] == stamped.isoformat()
    generated = dt.datetime.fromisoformat(etree.fromstring(response.content).get("ДатаФормирования"))
    assert before <= generated <= after


# --- bad status documents ---------------------------------------------------------------------------

@pytest.mark.parametrize("data, words", [
    ("<КоммерческаяИнформация><Документ><Номер>A-1</Товар></Документ></КоммерческаяИнформация>".encode(), ["XML повреждён"]),
    (XXE, ["DOCTYPE"]),
    (status_document(order_document("A-1", **{"Статус заказа": "Собран"}), root="Заказы"), ["корневой элемент «Заказы»"]),
    (status_document(order_document("A-1", **{"Статус заказа": "Собран"}),
                     order_document("A-2", **{"Дата оплаты по 1С": "31.02.2024"})), ["заказ № A-2", "это не дата"]),
    (status_document(order_document("A-1", **{"Статус заказа": "Собран"}))[:-30], ["оборван"]),
    (b"", ["пуст"]),
])
def test_a_bad_status_document_is_refused_and_changes_nothing(tmp_path, serve, data, words):
    settings = sale_settings(tmp_path)
    base = serve(settings)
    api = Api(base)
    api.post(order_payload("A-1"))
    api.post(order_payload("A-2"))
    before = [api.order("A-1"), api.order("A-2")]
    client = Sale(base).login()
    lines = client.send("orders.xml", data)
    assert lines[0] == "failure" and len(lines) == 2, lines
    assert all(word in lines[1] for word in words), lines
    assert client.call("import", filename="orders.xml") == lines  # asked again: the same refusal
    assert [api.order("A-1"), api.order("A-2")] == before
    assert sessions(settings)[0]["result"] == "failed" and sessions(settings)[0]["error"] == lines[1]
    # the corrected document sent again under the same name replaces the broken one
    good = status_document(order_document("A-1", **{"Статус заказа": "Собран"}))
    assert client.send("orders.xml", good) == ["success"]
    assert api.order("A-1")["status"] == "Собран"


@pytest.mark.parametrize("call, words", [
    (lambda c: c.call("success"), ["нечего подтверждать", "mode=query"]),
    (lambda c: c.call("deactivate"), ["неизвестный режим", "type=sale"]),
    (lambda c: c.send("orders.zip", b"PK\x03\x04"), ["только документы XML"]),
    (lambda c: c.send("../orders.xml", b"<x/>"), ["переход по папкам"]),
    (lambda c: c.call("import", filename="never.xml"), ["не был загружен"]),
])
def test_sale_refusals(base, call, words):
    lines = call(Sale(base).login())
    assert lines[0] == "failure" and all(word in lines[1] for word in words), lines


def test_a_query_needs_a_login(base):
    response = requests.get(f"{base}/exchange/1c", params={"type": "sale", "mode": "query"}, timeout=10)
    assert response.headers["Content-Type"].startswith("text/plain")
    assert response.text.startswith("failure\nнет сеанса обмена")
    wrong = Sale(base, password="wrong")
    assert wrong.checkauth()[0] == "failure"


# --- the JSON API ---------------------------------------------------------------------------------

def test_the_api_is_off_without_a_key(tmp_path, serve):
    settings = sale_settings(tmp_path, key="")
    base = serve(settings)
    response = Api(base).post(order_payload("A-1"))
    assert response.status_code == 403 and "api.key" in response.json()["error"]
    assert Api(base).get("A-1").status_code == 403  # not readable either
    with CatalogStore(settings.store_path) as store:  # and refused before anything was stored
        assert store.order("A-1") is None and store.orders_summary()["orders"] == 0


def test_api_keys_are_checked_and_never_logged(base, caplog):
    caplog.set_level(logging.INFO)
    assert Api(base, key=None).post(order_payload("A-1")).status_code == 401
    refused = Api(base, key="not-the-key-0123456789").post(order_payload("A-1"))
    assert refused.status_code == 401 and refused.json() == {"error": "wrong API key"}
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert Api(base).get("A-1").status_code == 404
    by_header = requests.post(f"{base}/api/orders", json=order_payload("A-1"), headers={"X-Api-Key": API_KEY}, timeout=10)
    assert by_header.status_code == 201
    assert Api(base, key=None).get("A-1").status_code == 401
    assert API_KEY not in caplog.text and "not-the-key" not in caplog.text
    assert "orders api: order A-1 created" in caplog.text


def test_posting_the_same_number_is_idempotent(base):
    api = Api(base)
    created = api.post(order_payload("A-1"))
    again = api.post(order_payload("A-1"))
    assert (created.status_code, again.status_code, again.json()["result"]) == (201, 200, "unchanged")
    assert {k: v for k, v in again.json().items() if k != "result"} == api.order("A-1")
    assert api.order("A-1")["revision"] == 1 and len(api.order("A-1")["history"]) == 1
    changed = api.post(order_payload("A-1", payment_method="Наличными курьеру"))
    assert (changed.status_code, changed.json()["result"], changed.json()["revision"]) == (200, "updated", 2)
    assert changed.json()["history"][-1]["detail"] == "revision 2: payment_method"


@pytest.mark.parametrize("body, headers, status, field, words", [
    (order_payload(items=[{"offer_id": "a", "name": "b", "quantity": -1, "price": 1}]), None, 400, "items[0].quantity", "more than 0"),
    (order_payload(customer={"name": "Иван", "email": "i@e.ru", "company": {"name": "ООО", "inn": "1234567890", "kpp": "773601001"}}),
     None, 400, "customer.company.inn", "ИНН"),
    ([1, 2], None, 400, "order", "JSON object"),
    (b'{"number": "A-1",', {"Content-Type": "application/json"}, 400, None, "not valid JSON"),
    (b'{"number": NaN}', {"Content-Type": "application/json"}, 400, None, "NaN is not a number"),
    (b"\xff\xfe{}", {"Content-Type": "application/json"}, 400, None, "not UTF-8"),
    (b"[" * 60_000, {"Content-Type": "application/json"}, 400, None, "nested too deeply"),
    (b'{"number": "A-1001", "comment": "\\ud800"}', {"Content-Type": "application/json"}, 400, None, "half a character"),
    (b'{"number": "A-1001", "total": ' + b"1" * 5000 + b"}", {"Content-Type": "application/json"}, 400, None,
     "too many digits"),
    (b"number=A-1", {"Content-Type": "application/x-www-form-urlencoded"}, 415, None, "application/json"),
    (b"{" + b" " * 70_000 + b"}", {"Content-Type": "application/json"}, 413, None, "api.max_body_bytes"),
])
def test_api_refusals_are_json_naming_the_problem(base, body, headers, status, field, words):
    headers = {"Authorization": f"Bearer {API_KEY}", **(headers or {})}
    if isinstance(body, bytes):
        response = requests.post(f"{base}/api/orders", data=body, headers=headers, timeout=10)
    else:
        response = requests.post(f"{base}/api/orders", json=body, headers=headers, timeout=10)
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    answer = response.json()
    assert words in answer["error"] and answer.get("field") == field, answer
    assert Api(base).get("A-1001").status_code == 404  # nothing was stored


@pytest.mark.parametrize("method, path, status", [
    ("DELETE", "/api/orders/A-1", 405), ("GET", "/api/orders", 405), ("GET", "/api/nothing", 404), ("GET", "/api/", 404),
])
def test_other_api_addresses_answer_json(base, method, path, status):
    response = requests.request(method, base + path, headers={"X-Api-Key": API_KEY}, timeout=10)
    assert response.status_code == status
    assert "error" in json.loads(response.text)


def test_a_store_held_by_a_catalog_import_is_a_clear_refusal(tmp_path, serve, monkeypatch):
    """A long catalog import holds SQLite's write lock: orders wait a bounded time, then are refused, not lost."""
    settings = sale_settings(tmp_path)
    base = serve(settings)
    api = Api(base)
    api.post(order_payload("A-1"))
    monkeypatch.setattr("orders.web.STORE_WAIT_SECONDS", 0.2)
    monkeypatch.setattr("exchange.orders.ORDERS_WAIT_SECONDS", 0.2)
    client = Sale(base).login()
    holder = sqlite3.connect(settings.store_path)
    holder.execute("BEGIN IMMEDIATE")  # what an import's run does for its whole length
    try:
        busy = api.post(order_payload("A-2"))
        assert (busy.status_code, busy.headers["Retry-After"]) == (503, "60") and "busy" in busy.json()["error"]
        lines = client.send("st.xml", status_document(order_document("A-1", **{"Статус заказа": "Собран"})))
        assert lines[0] == "failure" and "занят" in lines[1]
    finally:
        holder.rollback()
        holder.close()
    assert api.post(order_payload("A-2")).status_code == 201
    assert client.send("st.xml", status_document(order_document("A-1", **{"Статус заказа": "Собран"}))) == ["success"]
    assert api.order("A-1")["status"] == "Собран"


# --- units of measure and currency rates ---------------------------------------------------------------

def test_a_weighed_good_reaches_1c_in_kilograms_as_1c_s_catalog_has_it(tmp_path, serve):
    """1C sends its catalog (a real export where «Барбарис (конфеты)» is sold by the kilogram); the shop sells
    half a kilo of it: 1C must read 0.5 кг, not half a piece. A unit the shop gives wins over the catalog's."""
    settings = sale_settings(tmp_path)
    base = serve(settings)
    OneC(base).exchange({"import.xml": fixture("django-cml-2.05", "import.xml")}, ["import.xml"])
    api, line = Api(base), {"price": "420.00", "vat": 20}
    weighed = api.post(order_payload("W-1", items=[
        {**line, "offer_id": "3ac805a0-720d-11d9-ac6c-0080482454f7", "name": "Барбарис (конфеты)", "quantity": "0.5"},
        {**line, "offer_id": "09fb7f4d-7e71-11d9-b798-505054503030", "name": "Калькулятор", "quantity": 1}]))
    assert weighed.status_code == 201, weighed.text
    client = Sale(base).login()
    body = client.query().content
    assert units_sent(body) == [("3ac805a0-720d-11d9-ac6c-0080482454f7", "кг", KG),
                                ("09fb7f4d-7e71-11d9-b798-505054503030", "шт", PIECES), ("ORDER_DELIVERY", "шт", PIECES)]
    [doc] = documents(body)
    assert child_text(children(children(doc, "Товары")[0], "Товар")[0], "Количество") == "0.5"
    assert_schema_valid(body, "2.08")
    assert client.call("success") == ["success"]

    posted = api.post(order_payload("W-2", items=[
        {**line, "offer_id": "ac89d718-863a-11dd-a915-00112f3000a2", "name": "Бензин АИ-76, канистра", "quantity": 2,
         "unit": {"code": "796", "name": "шт"}},
        {**line, "offer_id": "shop-only-1", "name": "Лента атласная", "quantity": "2.5", "unit": {"code": "006"}}]))
    assert posted.status_code == 201, posted.text
    assert [item["unit"] for item in posted.json()["items"]] == [{"code": "796", "name": "шт"}, {"code": "006", "name": "м"}]
    assert units_sent(Sale(base).login().query().content) == [
        ("ac89d718-863a-11dd-a915-00112f3000a2", "шт", PIECES),  # the catalog says л: the shop sells canisters
        ("shop-only-1", "м", {"Код": "006", "НаименованиеПолное": "Метр", "МеждународноеСокращение": "MTR"}),
        ("ORDER_DELIVERY", "шт", PIECES)]


def test_an_order_in_dollars_is_refused_without_its_rate_and_reaches_1c_with_it(base):
    api = Api(base)
    refused = api.post(order_payload("USD-1", currency="USD"))
    assert (refused.status_code, refused.headers["Content-Type"]) == (400, "application/json")
    assert refused.json()["field"] == "currency_rate" and "required for an order in USD" in refused.json()["error"]
    assert api.get("USD-1").status_code == 404  # nothing stored: no document with dollars read as roubles
    created = api.post(order_payload("USD-1", currency="USD", currency_rate="92.4575"))
    assert (created.status_code, created.json()["currency"], created.json()["currency_rate"]) == (201, "USD", "92.4575")
    assert api.post(order_payload("RUB-1")).json()["currency_rate"] == "1"
    first = Sale(base).login()
    sent = documents(first.query().content)
    rates = {child_text(d, "Номер"): (child_text(d, "Валюта"), child_text(d, "Курс")) for d in sent}
    assert rates == {"USD-1": ("USD", "92.4575"), "RUB-1": ("руб", "1")}
    again = Sale(base).login().query().content  # not confirmed: sent again, at the rate stored with the order
    assert {child_text(d, "Номер"): child_text(d, "Курс") for d in documents(again)} == {"USD-1": "92.4575", "RUB-1": "1"}
    changed = api.post(order_payload("USD-1", currency="USD", currency_rate="93.1"))
    assert (changed.json()["result"], changed.json()["history"][-1]["detail"]) == ("updated", "revision 2: currency_rate")


def test_the_base_currency_is_the_one_moysklad_reported(tmp_path, serve):
    """An account that keeps its books in tenge: a tenge order is at rate 1, a rouble order needs its rate."""
    settings = sale_settings(tmp_path)
    with CatalogStore(settings.store_path) as store, store.run("moysklad", "sync") as run:
        run.set_setting("currency", "KZT")
    api = Api(serve(settings))
    refused = api.post(order_payload("R-1"))
    assert (refused.status_code, refused.json()["field"]) == (400, "currency_rate")
    assert "how many KZT one RUB is worth" in refused.json()["error"]
    assert api.post(order_payload("K-1", currency="KZT")).json()["currency_rate"] == "1"
    assert api.post(order_payload("R-1", currency_rate="0.1843")).status_code == 201


def test_a_cyrillic_number_travels_in_urls(base):
    api = Api(base)
    created = api.post(order_payload("Заказ-17"))
    assert created.headers["Location"] == "/api/orders/%D0%97%D0%B0%D0%BA%D0%B0%D0%B7-17"
    assert api.order("Заказ-17")["number"] == "Заказ-17"
    [doc] = documents(Sale(base).login().query().content)
    assert child_text(doc, "Номер") == child_text(doc, "Ид") == "Заказ-17"
