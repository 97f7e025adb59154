"""Orders as the JSON API takes and gives them: validation into store rows, and store rows back to JSON.

Pure functions, no Flask and no database. Money travels as strings or numbers in roubles with at most
two decimals ("1990.50") and is kept in kopecks; quantities keep up to three decimals (kilograms,
metres). Every refusal is an :class:`OrderInvalid` naming the field (``items[2].quantity``), so
the caller can fix the one thing that is wrong.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from core.clock import MOSCOW
from core.money import money
from core.units import OKEI, OKEI_CODE
from store.orders import DELIVERY_ID, DELIVERY_NAME

MAX_ITEMS = 1000
MAX_MONEY = Decimal("999999999.99")
MAX_QUANTITY = Decimal(1_000_000)
MAX_RATE = Decimal(1_000_000)  # units of the base currency per unit of the order's
RATE_DECIMALS = 4  # 1C keeps currency rates with four decimals, as the Central Bank publishes them
VAT_RATES = ("0", "5", "7", "10", "20", "22")  # Russian VAT, with the USN rates 5 and 7 (2025) and 22 (2026)
NUMBER = re.compile(r"[0-9A-Za-zА-Яа-яЁё_.-]{1,40}")  # it is the document's Ид (≤ 40 in CommerceML) and a URL part
PHONE = re.compile(r"\+?[0-9()\s-]{5,32}")
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
KPP = re.compile(r"\d{4}[\dA-Z]{2}\d{3}")
CURRENCY = re.compile(r"[A-Z]{3}")
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
CONTROL_OR_NEWLINE = re.compile(r"[\x00-\x1f\x7f]")
FIELDS = {
    "": ("number", "date", "currency", "currency_rate", "customer", "items", "delivery", "payment_method", "paid",
         "comment", "total", "status", "cancelled"),
    "customer": ("name", "phone", "email", "address", "company"),
    "customer.company": ("name", "inn", "kpp"),
    "items[]": ("offer_id", "type", "name", "quantity", "price", "discount", "vat", "unit"),
    "items[].unit": ("code", "name"),
    "delivery": ("method", "price", "vat"),
}


class OrderInvalid(ValueError):
    """The order cannot be taken; ``field`` names the offending field, the message says what is wrong."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


@dataclass
class ValidOrder:
    """An order ready for the store: its columns, its lines (the delivery line last), the statuses the shop
    gives (only those it gives: the others stay as 1C reported them) and a hash of all three."""

    number: str
    columns: dict
    items: list[dict]
    content_hash: str
    statuses: dict
    # the hash a release before dates were kept on Moscow wall clock gave it (its date with the offset as given), or None
    earlier_hash: str | None = None


def validate_order(payload, base_currency: str = "RUB") -> ValidOrder:
    """Check a POST /api/orders body and turn it into store rows; OrderInvalid names the first problem.
    ``base_currency``: the one 1C counts in at rate 1 (another needs ``currency_rate``)."""
    body = _object(payload, "order", "")
    number = _text(body, "number", "number", 40, required=True)
    if not NUMBER.fullmatch(number) or number in (".", ".."):  # those two: a path step back or none (RFC 3986)
        raise OrderInvalid("number", "use 1-40 letters, digits, '-', '_' or '.' (not '.' or '..' alone)")
    customer = _object(body.get("customer"), "customer", "customer")
    company = _company(customer)
    name = _text(customer, "name", "customer.name", 255, required=not company)
    phone = _text(customer, "phone", "customer.phone", 32)
    if phone and (not PHONE.fullmatch(phone) or len(re.sub(r"\D", "", phone)) < 5):
        raise OrderInvalid("customer.phone", f"{phone!r} is not a phone number")
    email = _text(customer, "email", "customer.email", 254)
    if email and not EMAIL.fullmatch(email):
        raise OrderInvalid("customer.email", f"{email!r} is not an e-mail address")
    if not phone and not email:
        raise OrderInvalid("customer", "give a phone or an e-mail, 1C needs a way to reach the buyer")
    items = _items(body.get("items"))
    delivery_method, delivery_line = _delivery(body)
    if delivery_line:
        items.append(delivery_line)
    total = sum(item["amount"] for item in items)
    if body.get("total") is not None and _kopecks(body["total"], "total") != total:
        raise OrderInvalid("total", f"{body['total']} does not match the lines and the delivery ({money(total)})")
    currency = _text(body, "currency", "currency", 3) or "RUB"
    if not CURRENCY.fullmatch(currency):
        raise OrderInvalid("currency", f"{currency!r} is not an ISO 4217 code such as RUB")
    rate = _rate(body.get("currency_rate"), currency, base_currency)
    paid = body.get("paid", False)
    if not isinstance(paid, bool):
        raise OrderInvalid("paid", "must be true or false")
    statuses = _statuses(body)
    columns = {
        "ordered_at": _date(body.get("date")), "currency": currency, "currency_rate": rate, "total": total,
        "customer_name": name or None, "customer_phone": phone, "customer_email": email,
        "customer_address": _text(customer, "address", "customer.address", 255),
        "company_name": company.get("name"), "company_inn": company.get("inn"), "company_kpp": company.get("kpp"),
        "payment_method": _text(body, "payment_method", "payment_method", 255), "paid": int(paid),
        "shipping_method": delivery_method, "comment": _text(body, "comment", "comment", 3000, multiline=True),
    }
    # without statuses, a rate or units the hash is what it always was: an order stored earlier and posted again
    # is unchanged (rate 1 is the rate every order had before rates were kept; lines carry a unit only when given)
    hashed = {k: v for k, v in columns.items() if k != "currency_rate" or v != "1"}
    as_given = _date_as_given(body.get("date"))
    earlier = _content_hash({**hashed, "ordered_at": as_given}, items, statuses) if as_given else None
    return ValidOrder(number, columns, items, _content_hash(hashed, items, statuses), statuses, earlier)


def _content_hash(hashed: dict, items: list[dict], statuses: dict) -> str:
    content = json.dumps({"columns": hashed, "items": items, **({"statuses": statuses} if statuses else {})},
                         sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(content.encode()).hexdigest()


def _rate(value, currency: str, base_currency: str) -> str:
    """Units of the base currency per unit of the order's: 1 for the base currency itself; another currency
    needs it, as 1C would otherwise read the amounts at rate 1."""
    if value is None:
        if currency != base_currency:
            raise OrderInvalid("currency_rate", f"required for an order in {currency}: how many {base_currency} one "
                                                f"{currency} is worth (1C counts in {base_currency})")
        return "1"
    rate = _decimal(value, "currency_rate")
    if rate <= 0 or rate > MAX_RATE:
        raise OrderInvalid("currency_rate", f"must be more than 0 and at most {MAX_RATE}, got {value}")
    if rate != rate.quantize(Decimal(1).scaleb(-RATE_DECIMALS)):
        raise OrderInvalid("currency_rate", f"at most {RATE_DECIMALS} decimals, got {value}")
    if currency == base_currency and rate != 1:
        raise OrderInvalid("currency_rate", f"must be 1 for an order in {base_currency}, the base currency, got {value}")
    return _plain(rate)


def _unit(value, where: str) -> dict:
    """The line's unit of measure as store columns: an OKEI code and its short name (required for a code
    core.units does not know); none given, none stored: the catalog's unit, else шт, goes to 1C."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise OrderInvalid(where, f'must be an object such as {{"code": "166", "name": "кг"}}, got {_json_type(value)}')
    unit = _object(value, "unit", where, FIELDS["items[].unit"])
    code = _text(unit, "code", f"{where}.code", 4, required=True)
    if not OKEI_CODE.fullmatch(code):
        raise OrderInvalid(f"{where}.code", f"{code!r} is not an OKEI code (3 or 4 digits: 796 for шт, 166 for кг)")
    name = _text(unit, "name", f"{where}.name", 50, required=code not in OKEI) or OKEI[code].name
    return {"unit_code": code, "unit_name": name}


def _statuses(body: dict) -> dict:
    """`status` (a text) and `cancelled` (true/false) when the shop gives them: how 1C learns of a cancellation."""
    statuses = {}
    status = _text(body, "status", "status", 255)
    if status:
        statuses["status"] = status
    if body.get("cancelled") is not None:
        if not isinstance(body["cancelled"], bool):
            raise OrderInvalid("cancelled", "must be true or false")
        statuses["cancelled"] = int(body["cancelled"])
    return statuses


def _company(customer: dict) -> dict:
    """The buyer's company: name, ИНН (checksum verified) and КПП (required with a 10-digit ИНН)."""
    if customer.get("company") is None:
        return {}
    company = _object(customer["company"], "company", "customer.company")
    name = _text(company, "name", "customer.company.name", 255, required=True)
    inn = _text(company, "inn", "customer.company.inn", 12, required=True)
    if not inn_valid(inn):
        raise OrderInvalid("customer.company.inn", f"{inn!r} is not a valid ИНН (10 digits for a company, "
                                                   "12 for a sole trader, with correct check digits)")
    kpp = _text(company, "kpp", "customer.company.kpp", 9, required=len(inn) == 10)
    if kpp and (len(inn) != 10 or not KPP.fullmatch(kpp)):
        raise OrderInvalid("customer.company.kpp", f"{kpp!r} is not a КПП (9 characters, for a company with a 10-digit ИНН)")
    return {"name": name, "inn": inn, "kpp": kpp}


def inn_valid(inn: str) -> bool:
    """ИНН check digits (10 digits for a company, 12 for a person or sole trader)."""
    if not inn.isascii() or not inn.isdigit() or len(inn) not in (10, 12):
        return False
    digits = [int(c) for c in inn]

    def check(weights: tuple[int, ...]) -> int:
        return sum(w * d for w, d in zip(weights, digits)) % 11 % 10

    if len(inn) == 10:
        return check((2, 4, 10, 3, 5, 9, 4, 6, 8)) == digits[9]
    return (check((7, 2, 4, 10, 3, 5, 9, 4, 6, 8)) == digits[10]
            and check((3, 7, 2, 4, 10, 3, 5, 9, 4, 6, 8)) == digits[11])


def _items(value) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise OrderInvalid("items", "must be a non-empty list of order lines")
    if len(value) > MAX_ITEMS:
        raise OrderInvalid("items", f"at most {MAX_ITEMS} lines, got {len(value)}")
    items = []
    for index, raw in enumerate(value):
        where = f"items[{index}]"
        item = _object(raw, "line", where, FIELDS["items[]"])
        kind = item.get("type", "product")
        if kind not in ("product", "service"):
            raise OrderInvalid(f"{where}.type", f"must be product or service, got {kind!r}")
        offer_id = _text(item, "offer_id", f"{where}.offer_id", 80, required=True)
        if offer_id == DELIVERY_ID:
            raise OrderInvalid(f"{where}.offer_id", f"{DELIVERY_ID} is the delivery line: give the delivery as 'delivery'")
        quantity = _quantity(item.get("quantity"), f"{where}.quantity")
        price = _kopecks(item.get("price"), f"{where}.price", required=True)
        discount = _kopecks(item.get("discount"), f"{where}.discount") or 0
        gross = int((Decimal(price) * quantity).quantize(Decimal(1), rounding=ROUND_HALF_UP))
        if discount > gross:
            raise OrderInvalid(f"{where}.discount", f"{money(discount)} is more than the line's {money(gross)}")
        items.append({"kind": kind, "offer_id": offer_id, "name": _text(item, "name", f"{where}.name", 255, required=True),
                      "quantity": _plain(quantity), "price": price, "discount": discount,
                      "vat": _vat(item.get("vat"), f"{where}.vat"), "amount": gross - discount,
                      **_unit(item.get("unit"), f"{where}.unit")})
    return items


def _delivery(body: dict) -> tuple[str | None, dict | None]:
    """The delivery method, and a service line ORDER_DELIVERY when the delivery costs something."""
    if body.get("delivery") is None:
        return None, None
    delivery = _object(body["delivery"], "delivery", "delivery")
    method = _text(delivery, "method", "delivery.method", 255)
    price = _kopecks(delivery.get("price"), "delivery.price") or 0
    if not price:
        return method, None
    return method, {"kind": "delivery", "offer_id": DELIVERY_ID, "name": DELIVERY_NAME, "quantity": "1", "price": price,
                    "discount": 0, "vat": _vat(delivery.get("vat"), "delivery.vat"), "amount": price}


def _object(value, what: str, where: str, allowed: tuple[str, ...] | None = None) -> dict:
    """A JSON object with only the known keys: a misspelt key is an error, not silently lost data."""
    if value is None and where:
        raise OrderInvalid(where, "required")
    if not isinstance(value, dict):
        raise OrderInvalid(where or what, f"must be a JSON object, got {_json_type(value)}")
    allowed = allowed or FIELDS[where]
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise OrderInvalid(f"{where}.{unknown[0]}" if where else unknown[0],
                           f"unknown field (known: {', '.join(allowed)})")
    return value


def _text(obj: dict, key: str, where: str, limit: int, *, required: bool = False, multiline: bool = False) -> str | None:
    value = obj.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise OrderInvalid(where, "required")
        return None
    if not isinstance(value, str):
        raise OrderInvalid(where, f"must be a string, got {_json_type(value)}")
    value = value.strip()
    if len(value) > limit:
        raise OrderInvalid(where, f"at most {limit} characters, got {len(value)}")
    if (CONTROL if multiline else CONTROL_OR_NEWLINE).search(value):
        raise OrderInvalid(where, "contains control characters")
    return value


def _decimal(value, where: str) -> Decimal:
    """A number given as a JSON number or a string ("1990.50"; a comma is taken for the point)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal, str)):
        raise OrderInvalid(where, f"must be a number, got {_json_type(value)}")
    if isinstance(value, float):  # as written, 99.99 rather than 99.9899999…
        value = repr(value)
    try:
        number = Decimal(value.strip().replace(",", ".")) if isinstance(value, str) else Decimal(value)
    except InvalidOperation:
        raise OrderInvalid(where, f"{value!r} is not a number") from None
    if not number.is_finite():
        raise OrderInvalid(where, f"{value!r} is not a number")
    return number


def _kopecks(value, where: str, *, required: bool = False) -> int | None:
    """Roubles with at most two decimals, 0 … 999,999,999.99, as kopecks."""
    if value is None:
        if required:
            raise OrderInvalid(where, "required")
        return None
    number = _decimal(value, where)
    if number < 0 or number > MAX_MONEY:
        raise OrderInvalid(where, f"must be between 0 and {MAX_MONEY}, got {value}")
    if number != number.quantize(Decimal("0.01")):
        raise OrderInvalid(where, f"at most two decimals (kopecks), got {value}")
    return int(number * 100)


def _quantity(value, where: str) -> Decimal:
    if value is None:
        raise OrderInvalid(where, "required")
    number = _decimal(value, where)
    if number <= 0 or number > MAX_QUANTITY:
        raise OrderInvalid(where, f"must be more than 0 and at most {MAX_QUANTITY}, got {value}")
    if number != number.quantize(Decimal("0.001")):
        raise OrderInvalid(where, f"at most three decimals, got {value}")
    return number


def _vat(value, where: str) -> str | None:
    """'none' (no VAT), a rate such as 20 or '20%', or absent (not stated)."""
    if value is None:
        return None
    text = value.strip().rstrip("%").strip().lower() if isinstance(value, str) else value
    if text == "none":
        return "none"
    if isinstance(text, (int, Decimal, str)) and not isinstance(text, bool):
        try:
            rate = Decimal(text)
        except InvalidOperation:
            rate = None
        if rate is not None and rate.is_finite() and _plain(rate) in VAT_RATES:
            return _plain(rate)
    raise OrderInvalid(where, f"must be 'none' or one of {', '.join(VAT_RATES)}, got {value!r}")


def _date_as_given(value) -> str | None:
    """A date (already checked by :func:`_date`) with its offset, as releases before Moscow wall clock stored it;
    None without an offset, which they stored as today."""
    moment = dt.datetime.fromisoformat(value.strip()) if isinstance(value, str) else None
    return moment.isoformat(timespec="seconds") if moment and moment.tzinfo else None


def _date(value) -> str | None:
    """ISO 8601 as Moscow wall-clock time without a zone, which is what 1C reads: a date with an offset is
    converted, one without is the shop's own wall clock and kept. Absent: the store stamps its arrival."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise OrderInvalid("date", f"must be an ISO 8601 string such as 2024-05-01T12:30:00+03:00, got {_json_type(value)}")
    try:
        moment = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise OrderInvalid("date", f"{value!r} is not an ISO 8601 date and time such as 2024-05-01T12:30:00+03:00") from None
    if moment.tzinfo:
        moment = moment.astimezone(MOSCOW).replace(tzinfo=None)
    if not 2000 <= moment.year <= 2100:
        raise OrderInvalid("date", f"{value!r} is outside 2000-2100")
    return moment.isoformat(timespec="seconds")


def _plain(number: Decimal) -> str:
    """A decimal without exponent or trailing zeros: 2, 0.5, 1.25."""
    return format(number.normalize(), "f")


def _json_type(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


# --- back to JSON ---------------------------------------------------------------------------------

def order_json(row: dict) -> dict:
    """An order from the store as GET /api/orders/<number> shows it: content, statuses (1C's or the shop's), history."""
    lines = [item for item in row["items"] if item["kind"] != "delivery"]
    delivery_line = next((item for item in row["items"] if item["kind"] == "delivery"), None)
    company = ({"name": row["company_name"], "inn": row["company_inn"], "kpp": row["company_kpp"]}
               if row["company_name"] else None)
    delivery = None
    if row["shipping_method"] or delivery_line:
        delivery = {"method": row["shipping_method"], "price": money(delivery_line["price"] if delivery_line else 0),
                    "vat": delivery_line["vat"] if delivery_line else None}
    return {
        "number": row["number"], "date": row["ordered_at"], "currency": row["currency"],
        "currency_rate": row["currency_rate"], "total": money(row["total"]),
        "customer": {"name": row["customer_name"], "phone": row["customer_phone"], "email": row["customer_email"],
                     "address": row["customer_address"], "company": company},
        "items": [{"offer_id": item["offer_id"], "type": item["kind"], "name": item["name"],
                   "quantity": item["quantity"], "price": money(item["price"]), "discount": money(item["discount"]),
                   "vat": item["vat"], "amount": money(item["amount"]),
                   "unit": {"code": item["unit_code"], "name": item["unit_name"]} if item["unit_code"] else None}
                  for item in lines],
        "delivery": delivery, "payment_method": row["payment_method"], "paid": bool(row["paid"]),
        "comment": row["comment"],
        "status": row["status"], "paid_at": row["paid_at"], "shipped_at": row["shipped_at"],
        "posted": bool(row["posted"]), "deleted": bool(row["deleted"]), "cancelled": bool(row["cancelled"]),
        "revision": row["revision"], "exported_revision": row["exported_revision"], "exported_at": row["exported_at"],
        "created_at": row["created_at"], "updated_at": row["updated_at"],
        "history": row["history"],
    }
