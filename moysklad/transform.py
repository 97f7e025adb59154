"""Pure functions that turn MoySklad JSON rows into catalog store records.

No I/O here: each function takes one row as MoySklad sends it and returns plain dicts, or raises
:class:`MalformedItem` with a reason an operator can read.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from urllib.parse import urlsplit

ITEM_KINDS = ("product", "variant", "service", "bundle")


class MalformedItem(ValueError):
    """A row we cannot store; the message is the reason shown to the operator."""


@dataclass
class AssortmentRecords:
    """Everything one assortment row contributes to the store."""

    offer: dict
    product: dict | None = None
    prices: list[dict] = field(default_factory=list)
    attributes: list[dict] = field(default_factory=list)


def id_from_href(href: str | None) -> str | None:
    """The entity id at the end of a MoySklad ``meta.href`` (query string ignored)."""
    if not href or not isinstance(href, str):
        return None
    path = urlsplit(href).path.rstrip("/")
    return path.rsplit("/", 1)[-1] or None


def linked_id(row: dict, key: str) -> str | None:
    """The id of an entity linked as ``{key: {meta: {href}}}``."""
    link = row.get(key)
    if isinstance(link, dict) and isinstance(link.get("meta"), dict):
        return id_from_href(link["meta"].get("href"))
    return None


def kopecks(value, what: str) -> int | None:
    """A money value from MoySklad (kopecks as a float) as an integer; rejects nonsense."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MalformedItem(f"{what} is not a number: {value!r}")
    if value < 0:
        raise MalformedItem(f"{what} is negative: {value!r}")
    return round(value)


def quantity(value) -> float:
    """A stock quantity; MoySklad sends null for unknown values (withRecalculate)."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return 0.0
    return float(value)


def _text(row: dict, key: str) -> str | None:
    value = row.get(key)
    return value if isinstance(value, str) else None


def _flag(row: dict, key: str) -> int:
    return 1 if row.get(key) is True else 0


def _number(row: dict, key: str) -> float | None:
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _identity(row: dict, what: str) -> tuple[str, str]:
    if not isinstance(row, dict):
        raise MalformedItem(f"{what} is not a JSON object")
    meta = row.get("meta")
    kind = meta.get("type") if isinstance(meta, dict) else None
    item_id = row.get("id")
    if not isinstance(item_id, str) or not item_id:
        item_id = id_from_href(meta.get("href")) if isinstance(meta, dict) else None
    if not item_id:
        raise MalformedItem(f"{what} has no id")
    return item_id, kind


def _name(row: dict, what: str) -> str:
    name = row.get("name")
    if not isinstance(name, str):
        raise MalformedItem(f"{what} has no name")
    return name


def category_record(row: dict) -> dict:
    """A product folder (группа товаров); the tree comes from the parent link."""
    folder_id, _ = _identity(row, "folder")
    return {
        "id": folder_id,
        "parent_id": linked_id(row, "productFolder"),
        "name": _name(row, "folder"),
        "code": _text(row, "code"),
        "external_code": _text(row, "externalCode"),
        "archived": _flag(row, "archived"),
        "updated": _text(row, "updated"),
    }


def barcodes(row: dict) -> str | None:
    """Barcodes as JSON ``[{"ean13": "..."}]``, the shape MoySklad uses, or None."""
    values = row.get("barcodes")
    if not isinstance(values, list):
        return None
    kept = [b for b in values if isinstance(b, dict) and b]
    return json.dumps(kept, ensure_ascii=False) if kept else None


def price_records(row: dict, offer_id: str) -> list[dict]:
    prices = row.get("salePrices")
    if prices is None:
        return []
    if not isinstance(prices, list):
        raise MalformedItem("salePrices is not a list")
    records = []
    for price in prices:
        if not isinstance(price, dict):
            raise MalformedItem("a sale price is not an object")
        price_type = price.get("priceType") if isinstance(price.get("priceType"), dict) else {}
        type_id = price_type.get("id") or linked_id(price, "priceType")
        if not type_id:
            raise MalformedItem("a sale price has no price type")
        name = price_type.get("name") or type_id
        value = kopecks(price.get("value"), f"price «{name}»")
        records.append({"offer_id": offer_id, "price_type_id": type_id, "value": value or 0})
    return records


def attribute_value(value) -> str | None:
    """An attribute value as text: links (custom entities, files) by their name."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return _text(value, "name") or _text(value, "filename")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def attribute_records(row: dict, owner_id: str) -> list[dict]:
    attributes = row.get("attributes")
    if not isinstance(attributes, list):
        return []
    records = []
    for attribute in attributes:
        if not isinstance(attribute, dict) or not isinstance(attribute.get("name"), str):
            continue
        attribute_id = attribute.get("id") or id_from_href((attribute.get("meta") or {}).get("href"))
        if not attribute_id:
            continue
        records.append({
            "owner_id": owner_id,
            "attribute_id": attribute_id,
            "name": attribute["name"],
            "type": _text(attribute, "type"),
            "value": attribute_value(attribute.get("value")),
        })
    return records


def _image_count(row: dict) -> int:
    images = row.get("images")
    if isinstance(images, dict) and isinstance(images.get("meta"), dict):
        size = images["meta"].get("size")
        if isinstance(size, int) and size >= 0:
            return size
    return 0


def _buy_price(row: dict) -> int | None:
    buy = row.get("buyPrice")
    return kopecks(buy.get("value"), "purchase price (buyPrice)") if isinstance(buy, dict) else None


def assortment_records(row: dict) -> AssortmentRecords:
    """One row of ``/entity/assortment``: a product, service or bundle (a card and its offer) or a variant."""
    item_id, kind = _identity(row, "assortment row")
    if kind not in ITEM_KINDS:
        raise MalformedItem(f"unknown assortment type {kind!r}")
    name = _name(row, kind)
    offer = {
        "id": item_id,
        "kind": kind,
        "name": name,
        "code": _text(row, "code"),
        "article": _text(row, "article"),
        "external_code": _text(row, "externalCode"),
        "barcodes": barcodes(row),
        "characteristics": None,
        "buy_price": _buy_price(row),
        "image_count": _image_count(row),
        "archived": _flag(row, "archived"),
        "updated": _text(row, "updated"),
    }
    records = AssortmentRecords(offer=offer, prices=price_records(row, item_id))
    if kind == "variant":
        product_id = linked_id(row, "product")
        if not product_id:
            raise MalformedItem("variant without a link to its product")
        characteristics = row.get("characteristics")
        if not isinstance(characteristics, list):
            characteristics = []
        offer["product_id"] = product_id
        offer["characteristics"] = json.dumps(
            [{"name": c.get("name"), "value": c.get("value")} for c in characteristics
             if isinstance(c, dict) and isinstance(c.get("name"), str)],
            ensure_ascii=False,
        )
        return records
    offer["product_id"] = item_id
    vat_enabled = row.get("effectiveVatEnabled", row.get("vatEnabled"))
    vat = row.get("effectiveVat", row.get("vat"))
    records.product = {
        "id": item_id,
        "kind": kind,
        "name": name,
        "code": offer["code"],
        "article": offer["article"],
        "external_code": offer["external_code"],
        "category_id": linked_id(row, "productFolder"),
        "description": _text(row, "description"),
        "unit_id": linked_id(row, "uom"),
        "vat": float(vat) if isinstance(vat, (int, float)) and not isinstance(vat, bool) else None,
        "vat_enabled": None if vat_enabled is None else int(vat_enabled is True),
        "weight": _number(row, "weight"),
        "volume": _number(row, "volume"),
        "variants_count": row.get("variantsCount") if isinstance(row.get("variantsCount"), int) else 0,
        # products and bundles carry it; a variant is marked as its product (Variant has no trackingType)
        "tracking_type": _text(row, "trackingType"),
        "archived": offer["archived"],
        "updated": offer["updated"],
    }
    records.attributes = attribute_records(row, item_id)
    return records


def bundle_component_records(row: dict) -> tuple[str, list[dict] | None]:
    """A row of ``/entity/bundle?expand=components``: (bundle id, its components), or None for the
    components when the row does not hold them all (expand ignored, or more than it inlines)."""
    bundle_id, _ = _identity(row, "bundle")
    block = row.get("components") if isinstance(row.get("components"), dict) else {}
    rows, meta = block.get("rows"), block.get("meta")
    size = meta.get("size") if isinstance(meta, dict) else None
    if not isinstance(rows, list) or (isinstance(size, int) and size > len(rows)):
        return bundle_id, None
    return bundle_id, [component_record(bundle_id, component) for component in rows]


def component_record(bundle_id: str, row: dict) -> dict:
    """One bundle component (BundleComponent): the good, variant or service and how many go in the bundle."""
    if not isinstance(row, dict):
        raise MalformedItem("a bundle component is not a JSON object")
    component_id = linked_id(row, "assortment")
    if not component_id:
        raise MalformedItem("a bundle component has no link to its good")
    amount = _number(row, "quantity")
    if amount is None or amount <= 0:
        raise MalformedItem(f"a bundle component has no positive quantity: {row.get('quantity')!r}")
    return {"bundle_id": bundle_id, "component_id": component_id, "quantity": amount}


def stock_report_record(row: dict) -> tuple[str, int | None, dict | None]:
    """A row of ``/report/stock/all``: (offer id, unit cost in kopecks, first image or None)."""
    meta = row.get("meta") if isinstance(row, dict) else None
    offer_id = id_from_href(meta.get("href")) if isinstance(meta, dict) else None
    if not offer_id:
        raise MalformedItem("stock report row without an item link")
    try:
        cost = kopecks(row.get("price"), "unit cost")
    except MalformedItem:
        cost = None
    image = row.get("image")
    image_record = None
    if isinstance(image, dict) and isinstance(image.get("meta"), dict) and image["meta"].get("href"):
        image_record = {
            "owner_id": offer_id,
            "position": 0,
            "filename": _text(image, "filename"),
            "title": _text(image, "title"),
            "size": image.get("size") if isinstance(image.get("size"), int) else None,
            "updated": _text(image, "updated"),
            "href": image["meta"]["href"],
            "permanent_href": image["meta"].get("downloadPermanentHref"),
        }
    return offer_id, cost, image_record


def reference_record(row: dict, what: str, *fields: tuple[str, str]) -> dict:
    """Small reference entities (warehouses, units): id, name and the named extra fields."""
    item_id, _ = _identity(row, what)
    record = {"id": item_id, "name": _name(row, what)}
    for column, key in fields:
        value = row.get(key)
        record[column] = int(value) if isinstance(value, bool) else value if isinstance(value, (str, int, float)) else None
    return record


def price_type_records(company_settings: dict) -> list[dict]:
    types = company_settings.get("priceTypes") if isinstance(company_settings, dict) else None
    records = []
    for position, price_type in enumerate(types or []):
        if not isinstance(price_type, dict):
            continue
        type_id = price_type.get("id") or id_from_href((price_type.get("meta") or {}).get("href"))
        if type_id and isinstance(price_type.get("name"), str):
            records.append({"id": type_id, "name": price_type["name"],
                            "external_code": _text(price_type, "externalCode"), "position": position})
    return records
