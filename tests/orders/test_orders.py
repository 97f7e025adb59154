"""Orders without a server: API validation, the CommerceML query document, status documents, the store's rules.

Documents are checked against what the vendors publish: the structure of a real Bitrix query answer
(../shared/fixtures) and the CommerceML schemas (../shared/specs; 2.05 and 3.1 schemas are not
published there, so documents are validated against 2.08–2.10, whose Документ 2.05 is a subset of).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import sqlite3
import threading
from pathlib import Path

import pytest
from lxml import etree

from core.settings import ConfigError, load_settings, redacted
from emulator.harness import SHARED
from exchange.orders import (
    BOM,
    FORMAT_ATTRIBUTES,
    FORMATS,
    IncompleteDocument,
    StatusDocumentError,
    customer_id,
    parse_status_document,
    render_orders,
)
from orders.validate import OrderInvalid, inn_valid, order_json, validate_order
from store import CatalogStore

SHARED = SHARED
SCHEMA_NAMESPACE = "urn:1C.ru:commerceml_2"
NOW = dt.datetime(2024, 5, 2, 9, 15, 0)


def order_payload(number: str = "A-1001", **changes) -> dict:
    """A realistic order: a company buyer, a variant, a weighed good, a discount, VAT and a paid delivery."""
    payload = {
        "number": number, "date": "2024-05-01T12:30:00+03:00", "currency": "RUB",
        "customer": {"name": "Иван Петров", "phone": "+7 (900) 123-45-67", "email": "Ivan@Example.ru",
                     "address": "Москва, ул. Ленина, д. 1, кв. 2",
                     "company": {"name": "ООО «Ромашка»", "inn": "7707083893", "kpp": "773601001"}},
        "items": [
            {"offer_id": "6f9619ff-8b86-d011-b42d-00cf4fc964ff#0e3a7b1c-52d4-11e9-80c5-00155d0a6f06",
             "name": "Футболка «Лето», красная, XL", "quantity": 2, "price": "1490.00", "discount": "149.00", "vat": 20},
            {"offer_id": "c0ffee00-0000-4000-8000-000000000002", "name": "Сыр твёрдый, кг", "quantity": "0.75",
             "price": 899.9, "vat": "10%"},
            {"offer_id": "svc-install", "type": "service", "name": "Сборка", "quantity": 1, "price": 500, "vat": "none"},
        ],
        "delivery": {"method": "Курьер по Москве", "price": "350.00", "vat": 20},
        "payment_method": "Банковской картой на сайте", "paid": True, "comment": "Позвонить за час\nдомофон 12",
    }
    payload.update(changes)
    return payload


def put(store: CatalogStore, payload: dict) -> str:
    order = validate_order(json.loads(json.dumps(payload)))
    return store.save_order(order.number, order.columns, order.items, order.content_hash, earlier_hash=order.earlier_hash)


def children(element, name: str) -> list:
    return [child for child in element if etree.QName(child).localname == name]


def child_text(element, path: str) -> str:
    node = element
    for name in path.split("/"):
        node = children(node, name)[0]
    return node.text or ""


def requisites(element) -> dict:
    block = children(element, "ЗначенияРеквизитов")
    return {child_text(entry, "Наименование"): child_text(entry, "Значение") for entry in block[0]} if block else {}


def queried(store: CatalogStore, session: int = 1, fmt: str = "2.05-cp1251") -> tuple[bytes, list[dict]]:
    _, orders = store.start_order_query(session, fmt, 500)
    return render_orders(orders, fmt, NOW), orders


# --- validation ---------------------------------------------------------------------------------

def test_a_valid_order_becomes_exact_store_rows():
    order = validate_order(order_payload())
    tee, cheese, service, delivery = order.items
    assert (tee["price"], tee["discount"], tee["amount"], tee["quantity"], tee["vat"]) == (149000, 14900, 283100, "2", "20")
    assert (cheese["price"], cheese["amount"], cheese["quantity"], cheese["vat"]) == (89990, 67493, "0.75", "10")  # 674.925 → 674.93
    assert (service["kind"], service["vat"]) == ("service", "none")
    assert delivery == {"kind": "delivery", "offer_id": "ORDER_DELIVERY", "name": "Доставка заказа", "quantity": "1",
                        "price": 35000, "discount": 0, "vat": "20", "amount": 35000}
    assert order.columns["total"] == 283100 + 67493 + 50000 + 35000
    assert order.columns["shipping_method"] == "Курьер по Москве" and order.columns["paid"] == 1
    assert order.columns["ordered_at"] == "2024-05-01T12:30:00"  # +03:00 is Moscow: the same wall clock, kept without a zone


@pytest.mark.parametrize("change, field, words", [
    ({"number": None}, "number", "required"),
    ({"number": "A 1001"}, "number", "letters"),
    ({"number": "x" * 41}, "number", "at most 40"),
    ({"customer": None}, "customer", "required"),
    ({"custumer": {}}, "custumer", "unknown field"),
    ({"items": []}, "items", "non-empty"),
    ({"items": [{"offer_id": "a", "name": "b", "quantity": 1}]}, "items[0].price", "required"),
    ({"items": [{"offer_id": "a", "name": "b", "quantity": 0, "price": 1}]}, "items[0].quantity", "more than 0"),
    ({"items": [{"offer_id": "a", "name": "b", "quantity": "1.0001", "price": 1}]}, "items[0].quantity", "three decimals"),
    ({"items": [{"offer_id": "a", "name": "b", "quantity": 1, "price": "10.999"}]}, "items[0].price", "two decimals"),
    ({"items": [{"offer_id": "a", "name": "b", "quantity": 1, "price": -1}]}, "items[0].price", "between 0"),
    ({"items": [{"offer_id": "a", "name": "b", "quantity": 1, "price": "дорого"}]}, "items[0].price", "not a number"),
    ({"items": [{"offer_id": "a", "name": "b", "quantity": 1, "price": True}]}, "items[0].price", "must be a number"),
    ({"items": [{"offer_id": "a", "name": "b", "quantity": 2, "price": 10, "discount": 21}]}, "items[0].discount", "more than"),
    ({"items": [{"offer_id": "a", "name": "b", "quantity": 1, "price": 10, "vat": 18}]}, "items[0].vat", "one of"),
    ({"items": [{"offer_id": "a", "name": "b", "quantity": 1, "price": 10, "colour": "red"}]}, "items[0].colour", "unknown"),
    ({"items": [{"offer_id": "ORDER_DELIVERY", "name": "b", "quantity": 1, "price": 10}]}, "items[0].offer_id", "delivery"),
    ({"items": [{"offer_id": "a", "name": "b\x00", "quantity": 1, "price": 10}]}, "items[0].name", "control"),
    ({"total": "1.00"}, "total", "does not match"),
    ({"date": "01.05.2024"}, "date", "ISO 8601"),
    ({"currency": "руб"}, "currency", "ISO 4217"),
    ({"paid": "yes"}, "paid", "true or false"),
    ({"cancelled": "yes"}, "cancelled", "true or false"),
    ({"status": "x" * 256}, "status", "at most 255"),
    ({"delivery": {"price": "free"}}, "delivery.price", "not a number"),
    ({"comment": "x" * 3001}, "comment", "at most 3000"),
    ({"number": ".."}, "number", "not '.' or '..' alone"),  # /api/orders/.. is the list's address to any HTTP client
    ({"number": "."}, "number", "not '.' or '..' alone"),
])
def test_validation_names_the_offending_field(change, field, words):
    with pytest.raises(OrderInvalid) as error:
        validate_order(order_payload(**change))
    assert error.value.field == field
    assert words in error.value.problem


@pytest.mark.parametrize("customer, field, words", [
    ({"name": "Иван"}, "customer", "phone or an e-mail"),
    ({"email": "i@example.ru"}, "customer.name", "required"),
    ({"name": "Иван", "phone": "call me"}, "customer.phone", "not a phone"),
    ({"name": "Иван", "email": "ivan.example.ru"}, "customer.email", "not an e-mail"),
    ({"email": "i@e.ru", "company": {"name": "ООО Ромашка", "inn": "7707083894", "kpp": "773601001"}},
     "customer.company.inn", "not a valid ИНН"),
    ({"email": "i@e.ru", "company": {"name": "ООО Ромашка", "inn": "7707083893"}}, "customer.company.kpp", "required"),
    ({"email": "i@e.ru", "company": {"name": "ИП Иванов", "inn": "500100732259", "kpp": "773601001"}},
     "customer.company.kpp", "10-digit"),
    ({"email": "i@e.ru", "company": {"inn": "7707083893", "kpp": "773601001"}}, "customer.company.name", "required"),
])
def test_customer_validation(customer, field, words):
    with pytest.raises(OrderInvalid) as error:
        validate_order(order_payload(customer=customer))
    assert (error.value.field, words in error.value.problem) == (field, True), str(error.value)


def test_inn_check_digits():
    assert inn_valid("7707083893") and inn_valid("7736050003") and inn_valid("500100732259")
    assert not inn_valid("7707083894") and not inn_valid("500100732258") and not inn_valid("77070838930")
    assert not inn_valid("７７０７０８３８９３")  # full-width digits are digits to Python, not to the tax service


def test_a_sole_trader_needs_no_kpp_and_a_person_no_company():
    sole = validate_order(order_payload(customer={"phone": "89001234567", "company": {"name": "ИП Иванов И.И.",
                                                                                     "inn": "500100732259"}}))
    assert (sole.columns["company_inn"], sole.columns["company_kpp"], sole.columns["customer_name"]) == ("500100732259", None, None)
    person = validate_order(order_payload(customer={"name": "Анна", "email": "anna@example.ru"}))
    assert person.columns["company_name"] is None


# --- the query document -----------------------------------------------------------------------------

def test_the_default_format_is_windows_1251_with_character_references(store):
    put(store, order_payload(comment="Без сахара 😀, «ёлка» № 5 — €"))
    _, orders = store.start_order_query(1, "2.05-cp1251", 500)
    orders[0]["comment"] += "\x07"  # the API refuses control characters; the renderer drops them anyway
    body = render_orders(orders, "2.05-cp1251", NOW)
    assert body.startswith(b'<?xml version="1.0" encoding="windows-1251"?>\n<')
    text = body.decode("cp1251")  # every byte is windows-1251
    assert "Без сахара &#128512;, «ёлка» № 5 — €" in text  # the emoji as a reference, the rest as cp1251 bytes
    root = etree.fromstring(body)
    assert child_text(children(root, "Документ")[0], "Комментарий") == "Без сахара 😀, «ёлка» № 5 — €"  # \x07 dropped


@pytest.mark.parametrize("fmt", ["2.05-utf8", "3.1"])
def test_utf8_formats_start_with_a_bom(store, fmt):
    put(store, order_payload())
    body, _ = queried(store, fmt=fmt)
    assert body.startswith(BOM + b'<?xml version="1.0" encoding="UTF-8"?>')
    body[3:].decode("utf-8")
    root = etree.fromstring(body)
    assert root.get("ВерсияСхемы") == FORMATS[fmt].version


def test_3_1_wraps_each_order_in_a_container(store):
    for number in ("1", "2"):
        put(store, order_payload(number))
    root = etree.fromstring(queried(store, fmt="3.1")[0])
    containers = children(root, "Контейнер")
    assert [len(children(c, "Документ")) for c in containers] == [1, 1]
    assert [child_text(children(c, "Документ")[0], "Номер") for c in containers] == ["1", "2"]
    assert not children(root, "Документ")


def test_the_document_says_what_the_order_says(store):
    put(store, order_payload())
    root = etree.fromstring(queried(store)[0])
    [doc] = children(root, "Документ")
    assert {tag: child_text(doc, tag) for tag in ("Ид", "Номер", "Дата", "Время", "ХозОперация", "Роль", "Валюта", "Курс", "Сумма")} == {
        "Ид": "A-1001", "Номер": "A-1001", "Дата": "2024-05-01", "Время": "12:30:00", "ХозОперация": "Заказ товара",
        "Роль": "Продавец", "Валюта": "руб", "Курс": "1", "Сумма": "4355.93"}
    [agent] = children(children(doc, "Контрагенты")[0], "Контрагент")
    assert (child_text(agent, "ОфициальноеНаименование"), child_text(agent, "ИНН"), child_text(agent, "КПП"),
            child_text(agent, "Роль")) == ("ООО «Ромашка»", "7707083893", "773601001", "Покупатель")
    contacts = {child_text(c, "Тип"): child_text(c, "Значение") for c in children(children(agent, "Контакты")[0], "Контакт")}
    assert contacts == {"Почта": "Ivan@Example.ru", "Телефон рабочий": "+7 (900) 123-45-67"}
    goods = children(children(doc, "Товары")[0], "Товар")
    assert [child_text(g, "Ид") for g in goods][-1] == "ORDER_DELIVERY"
    assert [requisites(g)["ВидНоменклатуры"] for g in goods] == ["Товар", "Товар", "Услуга", "Услуга"]
    tee = goods[0]
    assert (child_text(tee, "ЦенаЗаЕдиницу"), child_text(tee, "Количество"), child_text(tee, "Сумма")) == ("1490.00", "2", "2831.00")
    assert (child_text(tee, "Скидки/Скидка/Сумма"), child_text(tee, "Налоги/Налог/Ставка"),
            child_text(tee, "Налоги/Налог/Сумма")) == ("149.00", "20", "471.83")  # 2831 × 20 / 120
    assert child_text(goods[2], "Налоги/Налог/Ставка") == "Без НДС"
    vat = {child_text(t, "Ставка"): child_text(t, "Сумма") for t in children(children(doc, "Налоги")[0], "Налог")}
    assert vat == {"20": "530.16", "10": "61.36"}  # 471.83 + 58.33 (delivery); 674.93 × 10 / 110
    assert requisites(doc) == {"Метод оплаты": "Банковской картой на сайте", "Заказ оплачен": "true",
                               "Способ доставки": "Курьер по Москве", "Адрес доставки": "Москва, ул. Ленина, д. 1, кв. 2",
                               "Контактное лицо": "Иван Петров", "Отменен": "false"}


def test_the_same_buyer_gets_the_same_counterparty_id():
    first = validate_order(order_payload("1")).columns
    second = validate_order(order_payload("2", customer={**order_payload()["customer"], "name": "Пётр"})).columns
    person = validate_order(order_payload("3", customer={"name": "Анна", "email": "ANNA@example.ru"})).columns
    again = validate_order(order_payload("4", customer={"name": "Анна К.", "email": "anna@example.ru"})).columns
    ids = [customer_id({**columns, "number": n}) for n, columns in (("1", first), ("2", second), ("3", person), ("4", again))]
    assert ids[0] == ids[1] and ids[2] == ids[3] and ids[0] != ids[2]
    assert len(str(ids[0])) <= 40  # Контрагент/Ид is at most 40 characters


def test_the_structure_matches_a_real_bitrix_query_answer(store):
    """Every element path of the Bitrix answer is in ours (but ИдКаталога: the shop does not know 1C's catalog id)."""
    fixture = SHARED / "fixtures/commerceml/site-sale-query-bitrix-cp1251/bitrix-query-response-full.xml"
    if not fixture.is_file():
        pytest.skip("../shared/fixtures is not present")
    theirs_root = etree.parse(str(fixture)).getroot()
    put(store, order_payload(customer={"name": "Анна", "email": "anna@example.ru", "address": "Тула, ул. Мира, 3"}))
    ours_root = etree.fromstring(queried(store)[0])
    assert set(ours_root.attrib) == set(theirs_root.attrib)
    assert {k: ours_root.get(k) for k in FORMAT_ATTRIBUTES} == {k: theirs_root.get(k) for k in FORMAT_ATTRIBUTES}
    theirs = set().union(*(paths(doc) for doc in children(theirs_root, "Документ")))
    ours = paths(children(ours_root, "Документ")[0])
    assert theirs - ours == {"/Товары/Товар/ИдКаталога"}
    [their_doc, our_doc] = children(theirs_root, "Документ")[0], children(ours_root, "Документ")[0]
    for tag in ("ХозОперация", "Роль", "Валюта", "Курс"):
        assert child_text(our_doc, tag) == child_text(their_doc, tag)
    assert set(requisites(children(children(our_doc, "Товары")[0], "Товар")[0])) <= set(
        requisites(children(children(their_doc, "Товары")[0], "Товар")[0]))


def paths(element, prefix: str = "") -> set[str]:
    found = set()
    for child in element:
        if isinstance(child.tag, str):
            path = f"{prefix}/{etree.QName(child).localname}"
            found |= {path} | paths(child, path)
    return found


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("version", ["2.08", "2.09", "2.10"])
def test_documents_are_valid_against_the_published_schemas(store, fmt, version):
    """The schema's namespace is put on (2.05 documents have none), the Bitrix format attributes and 3.1
    containers taken off, which no 2.x schema declares; everything else is validated as rendered."""
    put(store, order_payload("1"))
    put(store, order_payload("2", customer={"name": "Анна", "phone": "+79001112233", "address": "Тула"},
                             delivery={"method": "Самовывоз"}, comment=None, paid=False))
    put(store, order_payload("3", customer={"email": "ip@example.ru", "company": {"name": "ИП Иванов", "inn": "500100732259"}},
                             items=[{"offer_id": "x" * 80, "name": "😀 " + "я" * 253, "quantity": "1000000", "price": "999999.99"}]))
    assert_schema_valid(queried(store, fmt=fmt)[0], version)


def assert_schema_valid(body: bytes, version: str) -> None:
    """A query answer validated against the published schema of ``version``, made a 2.x document first."""
    path = SHARED / "specs" / f"commerceml_{version}.xsd"
    if not path.is_file():
        pytest.skip(f"{path} is not present")
    root = etree.fromstring(body)
    for name in FORMAT_ATTRIBUTES:
        del root.attrib[name]
    for container in children(root, "Контейнер"):
        root.extend(children(container, "Документ"))
        root.remove(container)
    for element in root.iter():
        element.tag = f"{{{SCHEMA_NAMESPACE}}}{etree.QName(element).localname}"
    schema = etree.XMLSchema(etree.parse(str(path)))
    assert schema.validate(root), schema.error_log


# --- status documents --------------------------------------------------------------------------------

def status_document(*documents: str, encoding: str = "windows-1251", root: str = "КоммерческаяИнформация",
                    bom: bool = False) -> bytes:
    text = (f'<?xml version="1.0" encoding="{encoding}"?>\n<{root} ВерсияСхемы="2.05" ДатаФормирования="2024-05-03T10:00:00">'
            + "".join(documents) + f"</{root}>")
    return (BOM if bom else b"") + text.encode("cp1251" if encoding == "windows-1251" else "utf-8")


def order_document(number: str, **values: str) -> str:
    entries = "".join(f"<ЗначениеРеквизита><Наименование>{k}</Наименование><Значение>{v}</Значение></ЗначениеРеквизита>"
                      for k, v in values.items())
    return (f"<Документ><Ид>{number}</Ид><Номер>{number}</Номер><Дата>2024-05-01</Дата><ХозОперация>Заказ товара</ХозОперация>"
            f"<ЗначенияРеквизитов>{entries}</ЗначенияРеквизитов></Документ>")


def test_status_requisites_are_read_in_any_encoding():
    values = {"Статус заказа": "Отгружен", "Дата оплаты по 1С": "2024-05-02T10:15:00", "Дата отгрузки по 1C": "03.05.2024 18:00:00",
              "Проведен": "true", "ПометкаУдаления": "false", "Отменен": "нет", "Комментарий менеджера": "не важно"}
    expected = {"status": "Отгружен", "paid_at": "2024-05-02T10:15:00", "shipped_at": "2024-05-03T18:00:00", "posted": 1,
                "deleted": 0, "cancelled": 0}
    for data in (status_document(order_document("A-1", **values)),
                 status_document(order_document("A-1", **values), encoding="UTF-8", bom=True),
                 status_document(order_document("A-1", **values), encoding="UTF-8")):
        [update] = parse_status_document(data, "orders.xml").updates
        assert (update.number, update.document_id, update.values) == ("A-1", "A-1", expected)


def test_1c_empty_dates_clear_and_3_1_containers_bring_payments_and_shipments():
    payment = ("<Документ><Ид>p-1</Ид><Номер>П-1</Номер><ХозОперация>Выплата безналичных денег</ХозОперация>"
               "<ЗначенияРеквизитов><ЗначениеРеквизита><Наименование>Дата оплаты по 1С</Наименование>"
               "<Значение>2024-05-04T09:00:00</Значение></ЗначениеРеквизита><ЗначениеРеквизита>"
               "<Наименование>Проведен</Наименование><Значение>true</Значение></ЗначениеРеквизита>"
               "</ЗначенияРеквизитов></Документ>")
    text = (f'<КоммерческаяИнформация xmlns="urn:1C.ru:commerceml_3" ВерсияСхемы="3.1"><Контейнер>'
            f'{order_document("A-1", **{"Дата отгрузки по 1С": "0001-01-01T00:00:00"})}{payment}</Контейнер>'
            f'<Контейнер>{payment}</Контейнер></КоммерческаяИнформация>')
    document = parse_status_document(text.encode(), "orders.xml")
    [update] = document.updates
    assert update.values == {"shipped_at": None, "paid_at": "2024-05-04T09:00:00"}  # the payment's posting is its own
    assert document.ignored == ["документ «Выплата безналичных денег» № П-1 без заказа"]


def requisite(name: str, value: str) -> str:
    return f"<ЗначениеРеквизита><Наименование>{name}</Наименование><Значение>{value}</Значение></ЗначениеРеквизита>"


@pytest.mark.parametrize("element, flag", [("<ПометкаУдаления>true</ПометкаУдаления>", ""),
                                           ("<Проведен>false</Проведен>", ""), ("", requisite("Проведен", "false"))])
def test_a_payment_marked_for_deletion_or_not_posted_does_not_pay_the_order(element, flag):
    payment = (f"<Документ><Ид>p-1</Ид><Номер>П-1</Номер><ХозОперация>Выплата безналичных денег</ХозОперация>{element}"
               f"<ЗначенияРеквизитов>{flag}{requisite('Дата оплаты по 1С', '2024-05-04T09:00:00')}</ЗначенияРеквизитов>"
               "</Документ>")
    text = (f'<КоммерческаяИнформация xmlns="urn:1C.ru:commerceml_3" ВерсияСхемы="3.1"><Контейнер>'
            f'{order_document("A-1", **{"Статус заказа": "Собран"})}{payment}</Контейнер></КоммерческаяИнформация>')
    [update] = parse_status_document(text.encode(), "orders.xml").updates
    assert update.values == {"status": "Собран"}


def test_the_shared_samples_read_as_status_documents():
    bitrix = SHARED / "fixtures/commerceml/site-sale-query-bitrix-cp1251/bitrix-query-response-full.xml"
    cscart = SHARED / "fixtures/commerceml/cscart-docs-orders-fragment/orders_cscart.xml"
    if not bitrix.is_file() or not cscart.is_file():
        pytest.skip("../shared/fixtures is not present")
    updates = parse_status_document(bitrix.read_bytes(), bitrix.name).updates
    assert [(u.number, u.values) for u in updates] == [
        ("132", {"status": "[N] Принят, ожидается оплата", "cancelled": 0}),
        ("133", {"status": "[N] Принят, ожидается оплата", "cancelled": 0})]
    data = ('<?xml version="1.0" encoding="UTF-8"?><КоммерческаяИнформация>'.encode() + cscart.read_bytes()
            + "</КоммерческаяИнформация>".encode())  # the sample is one Документ without its root
    [update] = parse_status_document(data, cscart.name).updates
    assert (update.number, update.values) == ("108", {"status": "Принят"})


def test_our_own_query_answer_reads_back(store):
    put(store, order_payload("A-1"))
    put(store, order_payload("A-2"))
    for fmt in FORMATS:
        updates = parse_status_document(queried(store, fmt=fmt)[0], "query.xml").updates
        assert [(u.number, u.values) for u in updates] == [("A-1", {"cancelled": 0}), ("A-2", {"cancelled": 0})]


XXE = ('<?xml version="1.0"?><!DOCTYPE КоммерческаяИнформация [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
       '<КоммерческаяИнформация>' + order_document("A-1", **{"Статус заказа": "&xxe;"}) + '</КоммерческаяИнформация>').encode()
LAUGHS = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;">]>'
          '<КоммерческаяИнформация>' + order_document("A-1", **{"Статус заказа": "&lol2;"}) + '</КоммерческаяИнформация>').encode()


@pytest.mark.parametrize("data, words", [
    (b"not xml at all", ["XML повреждён"]),
    ("<КоммерческаяИнформация><Документ></Товар></КоммерческаяИнформация>".encode(), ["XML повреждён", "строке 1"]),
    (XXE, ["DOCTYPE"]),
    (LAUGHS, ["DOCTYPE"]),
    (b"<!-- " + b"x" * 70_000 + b" -->" + XXE[XXE.index(b"<!DOCTYPE"):], ["DOCTYPE"]),
    (status_document(order_document("A-1"), root="Orders"), ["корневой элемент «Orders»"]),
    (status_document("<Каталог><Ид>1</Ид></Каталог>"), ["файл каталога", "type=catalog"]),
    (status_document(order_document("A-1", Проведен="возможно")), ["заказ № A-1", "«Проведен» = «возможно»"]),
    (status_document(order_document("A-1", **{"Дата оплаты по 1С": "вчера"})), ["заказ № A-1", "это не дата"]),
    ('<?xml version="1.0" encoding="UTF-8"?><КоммерческаяИнформация/>'.encode("cp1251"), ["XML повреждён"]),  # cp1251 declared UTF-8
])
def test_bad_documents_are_refused_with_a_reason(data, words):
    with pytest.raises(StatusDocumentError) as error:
        parse_status_document(data, "orders.xml")
    assert not isinstance(error.value, IncompleteDocument)
    for word in words:
        assert word in str(error.value)


@pytest.mark.parametrize("data", [b"", b"\xef\xbb\xbf  \n", status_document(order_document("A-1"))[:-40]])
def test_an_empty_or_cut_document_is_incomplete(data):
    with pytest.raises(IncompleteDocument):
        parse_status_document(data, "orders.xml")


def test_an_empty_changes_document_is_fine():
    assert parse_status_document(status_document(), "orders.xml").updates == []


# --- the store: one document, one transaction; what success marks ---------------------------------

def test_applying_changes_records_history_and_skips_unknown_orders(store):
    put(store, order_payload("A-1"))
    counts = store.apply_order_changes([
        {"ids": ["A-1", "A-1"], "number": "A-1", "values": {"status": "Собран", "posted": 1}},
        {"ids": ["", "777"], "number": "777", "values": {"status": "Отгружен"}},
        {"ids": ["A-1"], "number": "A-1", "values": {"status": "Собран", "paid_at": "2024-05-02T10:00:00"}},
    ], "session 5, file a.xml")
    assert (counts["documents"], counts["orders_changed"], counts["changes"], counts["unknown"]) == (2, 2, 3, 1)
    assert counts["skipped"] == ["заказ № 777 не найден на сайте"]
    assert [item["reason"] for item in store.skipped_items(counts["run_id"])] == ["заказ № 777 не найден на сайте"]
    history = [(h["field"], h["old"], h["new"], h["detail"]) for h in store.order("A-1")["history"]]
    assert history[1:] == [("status", None, "Собран", "session 5, file a.xml"), ("posted", "false", "true", "session 5, file a.xml"),
                           ("paid_at", None, "2024-05-02T10:00:00", "session 5, file a.xml")]


def test_a_failing_document_changes_nothing(store):
    put(store, order_payload("A-1"))
    before = store.order("A-1")
    with pytest.raises(ValueError, match="not an order status column"):
        store.apply_order_changes([{"ids": ["A-1"], "number": "A-1", "values": {"status": "Собран"}},
                                   {"ids": ["A-1"], "number": "A-1", "values": {"no_such_column": 1}}], "test")
    assert store.order("A-1") == before
    assert store.last_run("orders")["status"] == "failed"


def test_success_marks_exactly_the_orders_of_the_last_query(store):
    put(store, order_payload("A-1"))
    put(store, order_payload("A-2"))
    assert store.confirm_order_query(7) is None  # no query in this session
    _, first = store.start_order_query(7, "2.05-cp1251", 500)
    assert [o["number"] for o in first] == ["A-1", "A-2"]
    _, again = store.start_order_query(8, "2.05-cp1251", 500)  # another session, no success yet: sent again
    assert [o["number"] for o in again] == ["A-1", "A-2"]
    put(store, order_payload("A-3"))  # after session 7's query
    assert put(store, order_payload("A-2", comment="Изменён")) == "updated"  # changed after it was sent
    assert store.confirm_order_query(7) == 2
    assert store.confirm_order_query(7) == 2  # asked twice: the same answer, nothing more marked
    _, pending = store.start_order_query(7, "2.05-cp1251", 500)
    assert [(o["number"], o["revision"]) for o in pending] == [("A-2", 2), ("A-3", 1)]
    assert store.order("A-1")["exported_revision"] == 1 and store.order("A-3")["exported_revision"] is None
    assert store.order("A-2")["exported_revision"] == 1
    assert [h["field"] for h in store.order("A-2")["history"]] == ["created", "updated", "exported"]


def test_a_query_sends_each_order_with_the_lines_of_the_revision_it_records(store, monkeypatch):
    """The shop may change an order while 1C's query reads it: the document must not carry the order of one
    revision with the lines of the next (its sums would not add up), and mode=success confirms what was sent."""
    put(store, order_payload("A-1"))
    first_lines = store.order("A-1")["items"]
    changed = threading.Event()

    def change_order_meanwhile():  # the shop's API, through a connection of its own
        with CatalogStore(store.path, wait_seconds=30) as shop:
            put(shop, order_payload("A-1", items=[{"offer_id": "mug", "name": "Кружка", "quantity": 1, "price": 10}],
                                    delivery=None, total="10.00"))
        changed.set()

    read_lines = store._items_of

    def lines_read_while_the_shop_writes(numbers):
        threading.Thread(target=change_order_meanwhile).start()
        changed.wait(2)  # the change lands here unless the query holds the store until it has the lines
        return read_lines(numbers)

    monkeypatch.setattr(store, "_items_of", lines_read_while_the_shop_writes)
    _, sent = store.start_order_query(7, "2.05-cp1251", 500)
    assert changed.wait(30)
    monkeypatch.undo()
    assert sent[0]["revision"] == 1 and sent[0]["items"] == first_lines
    _, again = store.start_order_query(7, "2.05-cp1251", 500)
    assert again[0]["revision"] == 2 and [i["offer_id"] for i in again[0]["items"]] == ["mug"]


def test_a_query_is_capped_at_orders_per_query(store):
    for n in range(5):
        put(store, order_payload(f"N-{n}", date=f"2024-05-0{n + 1}T10:00:00"))
    _, orders = store.start_order_query(1, "2.05-cp1251", 3)
    assert [o["number"] for o in orders] == ["N-0", "N-1", "N-2"]  # oldest first


def test_the_same_order_again_changes_nothing(store):
    assert put(store, order_payload("A-1", date=None)) == "created"
    first = store.order("A-1")
    assert put(store, order_payload("A-1", date=None)) == "unchanged"  # no date: still the first arrival time
    assert store.order("A-1") == first
    assert put(store, order_payload("A-1", date=None, items=order_payload()["items"][:1])) == "updated"
    updated = store.order("A-1")
    assert updated["ordered_at"] == first["ordered_at"] and updated["revision"] == 2 and len(updated["items"]) == 2
    assert updated["history"][-1]["detail"] == "revision 2: total, items"


def test_order_json_round_trips_the_api_fields(store):
    payload = order_payload()
    put(store, payload)
    shown = order_json(store.order("A-1001"))
    assert shown["customer"] == {**payload["customer"]}
    assert [item["offer_id"] for item in shown["items"]] == [item["offer_id"] for item in payload["items"]]
    assert shown["items"][1] == {"offer_id": "c0ffee00-0000-4000-8000-000000000002", "type": "product", "name": "Сыр твёрдый, кг",
                                 "quantity": "0.75", "price": "899.90", "discount": "0.00", "vat": "10", "amount": "674.93",
                                 "unit": None}
    assert shown["delivery"] == {"method": "Курьер по Москве", "price": "350.00", "vat": "20"}
    assert (shown["total"], shown["paid"], shown["status"], shown["posted"]) == ("4355.93", True, None, False)
    again = copy.deepcopy(payload)
    again["total"] = shown["total"]  # the total GET shows, POSTed back, is accepted and changes nothing
    assert validate_order(again).content_hash == validate_order(payload).content_hash


# --- units of measure and currency rates --------------------------------------------------------------

def units_sent(body: bytes) -> list[tuple]:
    """Each line's БазоваяЕдиница of the first document: (Ид, text, attributes)."""
    goods = children(children(documents(body)[0], "Товары")[0], "Товар")
    units = [children(good, "БазоваяЕдиница")[0] for good in goods]
    return [(child_text(good, "Ид"), unit.text, dict(unit.attrib)) for good, unit in zip(goods, units)]


def documents(body: bytes) -> list:
    """The Документ elements of a query answer, in or out of 3.1 containers."""
    root = etree.fromstring(body)
    return children(root, "Документ") + [doc for c in children(root, "Контейнер") for doc in children(c, "Документ")]


KG = {"Код": "166", "НаименованиеПолное": "Килограмм", "МеждународноеСокращение": "KGM"}
PIECES = {"Код": "796", "НаименованиеПолное": "Штука", "МеждународноеСокращение": "PCE"}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_a_line_counts_in_the_shops_unit_else_the_catalogs_else_pieces(store, fmt):
    """MoySklad keeps units by id with their OKEI code, a CommerceML import by the code itself; a variant's unit
    is its product's. What the shop says of a line wins; nothing known anywhere is шт."""
    with store.run("moysklad", "sync") as run:
        run.upsert("units", [{"id": "uom-kg", "name": "кг", "code": "166", "description": "Килограмм"},
                             {"id": "uom-box", "name": "кор", "code": None, "description": "Коробка"}], ("source", "id"))
        run.upsert_products([{"id": "cheese", "kind": "product", "name": "Сыр", "unit_id": "uom-kg"},
                             {"id": "tea", "kind": "product", "name": "Чай", "unit_id": "uom-box"},
                             {"id": "paint", "kind": "product", "name": "Краска", "unit_id": "uom-kg"}])
        run.upsert_offers([{"id": "cheese-v1", "product_id": "cheese", "kind": "variant", "name": "Сыр, 45%"}])
    with store.run("exchange", "import") as run:
        run.upsert("units", [{"id": "006", "name": "м", "code": "006", "description": "Метр"}], ("source", "id"))
        run.upsert_products([{"id": "cable", "kind": "product", "name": "Кабель", "unit_id": "006"}])
    line = {"name": "Товар", "quantity": "0.5", "price": 100}
    put(store, order_payload("U-1", items=[
        {**line, "offer_id": "cheese-v1"}, {**line, "offer_id": "cable#black"}, {**line, "offer_id": "tea"},
        {**line, "offer_id": "paint", "unit": {"code": "112"}},
        {**line, "offer_id": "set-1", "unit": {"code": "704", "name": "набор"}},
        {**line, "offer_id": "unknown"}], delivery={"price": 300}, total=None))
    body, _ = queried(store, fmt=fmt)
    assert units_sent(body) == [
        ("cheese-v1", "кг", KG),
        ("cable#black", "м", {"Код": "006", "НаименованиеПолное": "Метр", "МеждународноеСокращение": "MTR"}),
        ("tea", "кор", {"НаименованиеПолное": "Коробка"}),
        ("paint", "л", {"Код": "112", "НаименованиеПолное": "Литр", "МеждународноеСокращение": "LTR"}),
        ("set-1", "набор", {"Код": "704"}), ("unknown", "шт", PIECES), ("ORDER_DELIVERY", "шт", PIECES)]
    assert child_text(children(children(documents(body)[0], "Товары")[0], "Товар")[0], "Количество") == "0.5"
    assert_schema_valid(body, "2.10")


def test_an_order_in_another_currency_carries_its_rate_to_1c(store):
    put(store, order_payload("USD-1", currency="USD", currency_rate="92.4575"))
    put(store, order_payload("RUB-1", currency_rate=1))
    body, _ = queried(store)
    [rub, usd] = documents(body)  # same date: by number
    assert (child_text(usd, "Валюта"), child_text(usd, "Курс")) == ("USD", "92.4575")
    assert (child_text(rub, "Валюта"), child_text(rub, "Курс")) == ("руб", "1")
    assert child_text(documents(queried(store, session=2)[0])[1], "Курс") == "92.4575"  # sent again, the same rate
    assert order_json(store.order("USD-1"))["currency_rate"] == "92.4575"
    for version in ("2.08", "2.09", "2.10"):
        assert_schema_valid(body, version)


def test_a_rate_of_1_and_no_units_hash_as_orders_always_did():
    """An order stored before rates and units were kept, posted again unchanged, is no new revision."""
    stored_earlier = "ca79ee0f81fcde1a0519227702d4826c6f766ddb9250e179516aaf8580145ac9"  # by the version before rates
    assert validate_order(order_payload()).content_hash == stored_earlier
    assert validate_order(order_payload(currency_rate="1.0")).content_hash == stored_earlier


@pytest.mark.parametrize("date, stored_earlier", [
    ("2024-05-01T12:30:00+03:00", "3ebad2ce520e92dbfb6fb36d3e60c0c53558578428246b3ef145d16985b3773e"),
    ("2024-05-01T19:30:00Z", "a4edffcc9e2b579d8d5db4cf1ef50e674163566a4b115c104ea58b451ed6b5b8"),
])
def test_an_order_stored_with_its_offset_by_an_earlier_release_and_posted_again_unchanged_stays_as_1c_has_it(
        tmp_path, date, stored_earlier):
    """Releases before dates were kept on Moscow wall clock stored the date with the offset the shop gave and hashed
    it so (the hashes are theirs). After an upgrade, the shop retrying such an order unchanged must not make it a new
    revision that goes to 1C once more."""
    path = tmp_path / "old.sqlite"
    with CatalogStore(path) as store:
        put(store, order_payload(date=date))
    moment = dt.datetime.fromisoformat(date).isoformat(timespec="seconds")
    with sqlite3.connect(path) as old:  # the row as the earlier release wrote it
        old.execute("UPDATE orders SET ordered_at = ?, content_hash = ?", [moment, stored_earlier])
    old.close()
    with CatalogStore(path) as store:
        queried(store)
        store.confirm_order_query(1)
        assert put(store, order_payload(date=date)) == "unchanged"
        assert queried(store, session=2)[1] == []  # 1C has it at this revision already
        assert store.order("A-1001")["revision"] == 1
        assert put(store, order_payload(date=date, comment="Другой комментарий")) == "updated"  # a change still is one


@pytest.mark.parametrize("change, field, words", [
    ({"currency": "USD"}, "currency_rate", "required for an order in USD"),
    ({"currency": "EUR", "currency_rate": 0}, "currency_rate", "more than 0"),
    ({"currency": "EUR", "currency_rate": "-3"}, "currency_rate", "more than 0"),
    ({"currency": "EUR", "currency_rate": "курс"}, "currency_rate", "not a number"),
    ({"currency": "EUR", "currency_rate": "100.12345"}, "currency_rate", "at most 4 decimals"),
    ({"currency_rate": "92.5"}, "currency_rate", "must be 1 for an order in RUB"),
    ({"items": [{"offer_id": "a", "name": "b", "quantity": 1, "price": 1, "unit": "кг"}]}, "items[0].unit",
     '{"code": "166", "name": "кг"}'),
    ({"items": [{"offer_id": "a", "name": "b", "quantity": 1, "price": 1, "unit": {"code": "kg"}}]}, "items[0].unit.code",
     "not an OKEI code"),
    ({"items": [{"offer_id": "a", "name": "b", "quantity": 1, "price": 1, "unit": {"name": "кг"}}]}, "items[0].unit.code",
     "required"),
    ({"items": [{"offer_id": "a", "name": "b", "quantity": 1, "price": 1, "unit": {"code": "704"}}]}, "items[0].unit.name",
     "required"),
    ({"items": [{"offer_id": "a", "name": "b", "quantity": 1, "price": 1, "unit": {"code": "166", "okei": "166"}}]},
     "items[0].unit.okei", "unknown field"),
])
def test_rates_and_units_are_refused_naming_the_field(change, field, words):
    with pytest.raises(OrderInvalid) as error:
        validate_order(order_payload(**change))
    assert (error.value.field, words in error.value.problem) == (field, True), str(error.value)


def test_the_base_currency_is_the_catalogs_when_it_names_one(store):
    assert store.base_currency() == "RUB"
    with store.run("moysklad", "sync") as run:
        run.set_setting("currency", "KZT")
    assert store.base_currency() == "KZT"
    with pytest.raises(OrderInvalid, match="required for an order in RUB: how many KZT"):
        validate_order(order_payload(), base_currency=store.base_currency())
    assert validate_order(order_payload(currency="KZT"), base_currency="KZT").columns["currency_rate"] == "1"


def test_a_store_from_before_rates_and_units_sends_its_orders_at_rate_1_in_pieces(tmp_path):
    path = tmp_path / "old.sqlite"
    with CatalogStore(path) as store:
        put(store, order_payload("OLD-1"))
    with sqlite3.connect(path) as old:  # the columns the earlier version's tables lacked
        for table, column in (("orders", "currency_rate"), ("order_items", "unit_code"), ("order_items", "unit_name")):
            old.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    old.close()
    with CatalogStore(path) as store:
        body, _ = queried(store)
    [doc] = documents(body)
    assert child_text(doc, "Курс") == "1"
    assert {text for _, text, _ in units_sent(body)} == {"шт"}


# --- settings -----------------------------------------------------------------------------------------

def test_order_settings_and_the_api_key(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("moysklad: {token: t}\nexchange: {orders_format: '3.1'}\napi: {key: from-file-0123456789}\n",
                      encoding="utf-8")
    settings = load_settings(config, environ={"SKLADBRIDGE_API_KEY": "from-env-0123456789abcdef"})
    assert (settings.exchange.orders_format, settings.api.key) == ("3.1", "from-env-0123456789abcdef")
    assert load_settings(config, environ={}).api.key == "from-file-0123456789"
    shown = redacted(settings)
    assert shown["api"]["key"] == "***" and "from-env" not in repr(shown)
    defaults = load_settings(write(tmp_path, "moysklad: {token: t}\n"), environ={})
    assert (defaults.exchange.orders_format, defaults.api.key, redacted(defaults)["api"]["key"]) == ("2.05-cp1251", "", "")


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "other.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("text, key", [
    ("exchange: {orders_format: utf8}", "exchange.orders_format"),
    ("exchange: {orders_per_query: 0}", "exchange.orders_per_query"),
    ("api: {key: short}", "api.key"),
    ("api: {max_body_bytes: 10}", "api.max_body_bytes"),
])
def test_order_config_errors_name_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_settings(write(tmp_path, f"moysklad: {{token: t}}\n{text}\n"), environ={})
