"""MoySklad JSON shapes for catalog records, key order as in the vendor's examples.

A Renderer is bound to one server origin, so every href points back at the emulator
and clients can follow nextHref/downloadHref as they would on api.moysklad.ru.
"""

from __future__ import annotations

import struct
import zlib
from datetime import datetime

from .catalog import (
    ATTRIBUTE_DEFS,
    CHARACTERISTIC_NAMES,
    KIND_BUNDLE,
    KIND_PRODUCT,
    KIND_SERVICE,
    KIND_VARIANT,
    Catalog,
    Folder,
    Item,
    component_id,
    format_moment,
    stock_totals,
)

JSON = "application/json"
COMPANY_VAT = 20
FILE_EXTENSIONS = ((b"\x89PNG", "png"), (b"\xff\xd8\xff", "jpg"), (b"RIFF", "webp"), (b"GIF8", "gif"))


def number(value: float) -> float | int:
    """Stock figures print as 11 or 46.5, like MoySklad; money stays float (1500.0)."""
    return int(value) if float(value).is_integer() else value


def image_png(image_id: str) -> bytes:
    """A valid 8x8 single-colour PNG whose colour is derived from the image id."""
    seed = int(image_id.replace("-", "")[:6], 16)
    pixel = bytes(((seed >> 16) & 255, (seed >> 8) & 255, seed & 255))
    raw = b"".join(b"\x00" + pixel * 8 for _ in range(8))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


class Renderer:
    """Builds response dicts; shared reference objects are built once per origin."""

    def __init__(self, catalog: Catalog, origin: str):
        self.catalog = catalog
        self.origin = origin
        self.base = origin + "/api/remap/1.2"
        ids = catalog.ids
        self.employee_ref = {"meta": self.meta("employee", ids.employee)}
        self.group_ref = {"meta": self.meta("group", ids.group)}
        self.currency_ref = {"meta": self.meta("currency", ids.currency)}
        self.context = {"context": {"employee": {"meta": {
            "href": f"{self.base}/context/employee", "metadataHref": f"{self.base}/entity/employee/metadata",
            "type": "employee", "mediaType": JSON}}}}
        self.price_type_refs = [self.price_type(pt) for pt in catalog.price_types]
        self.uom_refs = [{"meta": self.meta("uom", uom.id)} for uom in catalog.uoms]
        self.store_metas = [self.meta("store", store.id) for store in catalog.stores]

    # -- references ---------------------------------------------------------------------------

    def meta(self, kind: str, entity_id: str, metadata_kind: str | None = None) -> dict:
        return {"href": f"{self.base}/entity/{kind}/{entity_id}",
                "metadataHref": f"{self.base}/entity/{metadata_kind or kind}/metadata",
                "type": kind, "mediaType": JSON}

    def list_meta(self, href: str, kind: str, size: int, limit: int, offset: int, metadata: bool = True) -> dict:
        meta = {"href": href}
        if metadata:
            meta["metadataHref"] = href.split("?")[0].rstrip("/") + "/metadata"
        meta.update(type=kind, mediaType=JSON, size=size, limit=limit, offset=offset)
        return meta

    def item_href(self, item: Item) -> str:
        return f"{self.base}/entity/{item.kind}/{item.id}"

    def item_meta(self, item: Item) -> dict:
        metadata_kind = KIND_VARIANT if item.kind == KIND_VARIANT else KIND_PRODUCT
        return self.meta(item.kind, item.id, metadata_kind)

    def folder_ref(self, folder_id: str) -> dict:
        return {"meta": self.meta("productfolder", folder_id)}

    def price_type(self, price_type) -> dict:
        return {"meta": {"href": f"{self.base}/context/companysettings/pricetype/{price_type.id}",
                         "type": "pricetype", "mediaType": JSON},
                "id": price_type.id, "name": price_type.name, "externalCode": price_type.external_code}

    def money(self, value: float) -> dict:
        return {"value": float(value), "currency": self.currency_ref}

    def sale_prices(self, values: tuple) -> list:
        """Every price type, as MoySklad lists them; a variant without prices of its own has each at 0 (the vendor's
        variant_get.json, api-remap-1.2-doc/md/dictionaries/_variant.md:1486): it sells at its product's."""
        return [{"value": float(value), "currency": self.currency_ref, "priceType": ref}
                for value, ref in zip(values or (0.0,) * len(self.price_type_refs), self.price_type_refs)]

    def images_ref(self, item: Item) -> dict:
        return {"meta": {"href": f"{self.item_href(item)}/images", "type": "image", "mediaType": JSON,
                         "size": item.image_count, "limit": 1000, "offset": 0}}

    def barcodes(self, item: Item) -> list:
        return [{kind: value} for kind, value in item.barcodes]

    def attributes(self, item: Item) -> list:
        result = []
        for index, value in item.attributes:
            definition = self.catalog.attribute_defs[index]
            result.append({"meta": {"href": f"{self.base}/entity/product/metadata/attributes/{definition.id}",
                                    "type": "attributemetadata", "mediaType": JSON},
                           "id": definition.id, "name": definition.name, "type": ATTRIBUTE_DEFS[index][1],
                           "value": value})
        return result

    def attribute_metadata(self) -> dict:
        """GET /entity/product/metadata/attributes: the custom fields goods, services and bundles share
        (md/_general.md:458; shaped as fixtures/moysklad/product_metadata_attributes.json)."""
        href = f"{self.base}/entity/product/metadata/attributes"
        return {"meta": {"href": href, "mediaType": JSON},
                "rows": [{"meta": {"href": f"{href}/{definition.id}", "type": "attributemetadata", "mediaType": JSON},
                          "id": definition.id, "name": definition.name, "type": definition.type,
                          "required": False, "show": True}
                         for definition in self.catalog.attribute_defs]}

    def owned(self, body: dict) -> dict:
        body.update(owner=self.employee_ref, shared=True, group=self.group_ref)
        return body

    # -- VAT and folders ----------------------------------------------------------------------

    def folder_vat(self, folder_id: str | None) -> int:
        while folder_id:
            folder = self.catalog.folders.get(folder_id)
            if folder is None:
                break
            if folder.vat is not None:
                return folder.vat
            folder_id = folder.parent_id
        return COMPANY_VAT

    def vat_fields(self, body: dict, item: Item) -> None:
        body["useParentVat"] = item.use_parent_vat
        if item.use_parent_vat:
            body["effectiveVat"] = self.folder_vat(item.folder_id)
            body["effectiveVatEnabled"] = True
        elif item.vat_enabled:
            body.update(vat=item.vat, vatEnabled=True, effectiveVat=item.vat, effectiveVatEnabled=True)
        else:
            body.update(vatEnabled=False, effectiveVatEnabled=False)

    def folder_fields(self, body: dict, folder_id: str | None) -> None:
        folder = self.catalog.folders.get(folder_id) if folder_id else None
        body["pathName"] = folder.full_path if folder else ""
        if folder:
            body["productFolder"] = self.folder_ref(folder.id)

    # -- assortment ---------------------------------------------------------------------------

    def item(self, item: Item, with_stock: bool = False, expand: frozenset = frozenset()) -> dict:
        """Entity JSON of any assortment kind; with_stock adds the legacy assortment stock fields."""
        if item.kind == KIND_VARIANT:
            body = self.variant(item)
        else:
            body = self.owned({"meta": self.item_meta(item), "id": item.id, "accountId": self.catalog.ids.account})
            body.update(updated=format_moment(item.updated), name=item.name)
            if item.description:
                body["description"] = item.description
            body.update(code=item.code, externalCode=item.external_code, archived=item.archived)
            self.folder_fields(body, item.folder_id)
            self.vat_fields(body, item)
            body["uom"] = self.uom_refs[item.uom]
            if item.kind != KIND_SERVICE:
                body["images"] = self.images_ref(item)
            body["minPrice"] = self.money(item.min_price)
            body["salePrices"] = self.sale_prices(item.sale_prices)
            if item.buy_price is not None:
                body["buyPrice"] = self.money(item.buy_price)
            if item.kind != KIND_SERVICE:
                body.update(article=item.article, weight=item.weight, volume=item.volume)
            body["barcodes"] = self.barcodes(item)
            if item.attributes:
                body["attributes"] = self.attributes(item)
            body["discountProhibited"] = False
            if item.kind == KIND_PRODUCT:
                # trackingType: spec components/schemas/Product.trackingType (values: TrackingType enum)
                body.update(variantsCount=len(item.variant_ids), isSerialTrackable=False,
                            trackingType=item.tracking_type, paymentItemType="GOOD")
            elif item.kind == KIND_SERVICE:
                body["paymentItemType"] = "SERVICE"
            elif item.kind == KIND_BUNDLE:
                body["trackingType"] = item.tracking_type  # spec components/schemas/Bundle.trackingType
                body["components"] = self.components(item, expand)
        if with_stock and item.stocked:
            stock, reserve, in_transit = stock_totals(item)
            body.update(stock=number(stock), reserve=number(reserve), inTransit=number(in_transit),
                        quantity=number(stock - reserve + in_transit))
        body.update(self.catalog.raw_overrides.get(item.id, ()))
        return body

    def live_components(self, item: Item) -> list:
        return [(part, qty) for part, qty in item.components if part in self.catalog.items]

    def components(self, bundle: Item, expand: frozenset = frozenset()) -> dict:
        """A bundle's `components`: a link, with the rows inline under expand=components (and goods whole)."""
        # spec Bundle.components is a BundleComponentList; md/dictionaries/_bundle.md marks it "+Expand"
        live = self.live_components(bundle)
        block = {"meta": {"href": f"{self.item_href(bundle)}/components", "type": "bundlecomponent",
                          "mediaType": JSON, "size": len(live), "limit": 1000, "offset": 0}}
        if "components" in expand or "components.assortment" in expand:
            whole = "components.assortment" in expand
            block["rows"] = [self.component(bundle, part, quantity, whole) for part, quantity in live]
        return block

    def component(self, bundle: Item, part_id: str, quantity: float, whole_assortment: bool = False) -> dict:
        """One bundle component (spec BundleComponent): its own id, the good as meta (or whole) and the quantity."""
        good = self.catalog.items[part_id]
        own_id = component_id(bundle.id, part_id)
        return {"meta": {"href": f"{self.item_href(bundle)}/components/{own_id}", "type": "bundlecomponent",
                         "mediaType": JSON},
                "id": own_id, "accountId": self.catalog.ids.account,
                "assortment": self.item(good) if whole_assortment else {"meta": self.item_meta(good)},
                "quantity": number(quantity)}

    def variant(self, item: Item) -> dict:
        body = self.owned({"meta": self.item_meta(item), "id": item.id, "accountId": self.catalog.ids.account})
        body.update(updated=format_moment(item.updated), name=item.name, code=item.code,
                    externalCode=item.external_code, archived=item.archived, article=item.article,
                    discountProhibited=False)
        body["characteristics"] = [
            {"meta": {"href": f"{self.base}/entity/variant/metadata/characteristics/{self.catalog.characteristic_ids[i]}",
                      "type": "attributemetadata", "mediaType": JSON},
             "id": self.catalog.characteristic_ids[i], "name": CHARACTERISTIC_NAMES[i], "value": value}
            for i, value in item.characteristics]
        body["images"] = self.images_ref(item)
        body["salePrices"] = self.sale_prices(item.sale_prices)
        if item.buy_price is not None:
            body["buyPrice"] = self.money(item.buy_price)
        body["barcodes"] = self.barcodes(item)
        body["product"] = {"meta": self.meta(KIND_PRODUCT, item.parent_id)}
        return body

    # -- images -------------------------------------------------------------------------------

    def image_bytes(self, image_id: str) -> bytes:
        """The file of an image: the generated PNG unless a test put other bytes in its place."""
        return self.catalog.image_bytes_override.get(image_id) or image_png(image_id)

    def image_file(self, item: Item, index: int, image_id: str) -> dict:
        """Fields shared by an images row and the report's `image` object. MoySklad lists the name of the file
        as uploaded (images_list.json: "filename": "birdimage.png"): here its extension follows its bytes."""
        data = self.image_bytes(image_id)
        extension = next((e for magic, e in FILE_EXTENSIONS if data.startswith(magic)), "bin")
        return {"title": f"{item.code}-{index + 1}", "filename": f"{item.code}-{index + 1}.{extension}",
                "size": len(data), "updated": format_moment(item.updated)}

    def image_row(self, item: Item, index: int, image_id: str, permanent: bool) -> dict:
        meta = {"href": f"{self.item_href(item)}/images/{image_id}", "type": "image", "mediaType": JSON,
                "downloadHref": f"{self.base}/download/{image_id}"}
        if permanent:
            meta["downloadPermanentHref"] = f"{self.origin}/_files/cdn/{image_id}"
        row = {"meta": meta}
        row.update(self.image_file(item, index, image_id))
        row["miniature"] = {"href": f"{self.base}/download/{image_id}?miniature=true", "type": "image",
                            "mediaType": "image/png", "downloadHref": f"{self.origin}/_files/miniature/{image_id}"}
        row["tiny"] = {"href": f"{self.origin}/_files/tiny/{image_id}.png", "type": "image", "mediaType": "image/png"}
        return row

    # -- stock reports ------------------------------------------------------------------------

    def report_item_meta(self, item: Item) -> dict:
        meta = self.item_meta(item)
        meta["href"] += "?expand=product.supplier" if item.kind == KIND_VARIANT else "?expand=supplier"
        return meta

    def stock_all_row(self, line, parent: Item | None) -> dict:
        """A /report/stock/all row (md/reports/_report_stock.md, "Атрибуты объекта расширенного отчета")."""
        item = line.item
        source = parent or item
        prices = item.sale_prices or source.sale_prices
        row = {"meta": self.report_item_meta(item), "stock": number(line.stock), "inTransit": number(line.in_transit),
               "reserve": number(line.reserve), "quantity": number(line.quantity), "name": item.name,
               "code": item.code}
        if source.article:
            row["article"] = source.article
        # the vendor's report_stock_all.json: every row with stock 0 or below has price (unit cost) 0.0, no batch
        # being left to cost
        row.update(price=float(item.cost) if line.stock > 0 else 0.0, salePrice=float(prices[0]) if prices else 0.0)
        row["stockDays"] = line.stock_days  # documented as always present ("+Обязательное при ответе")
        uom = self.catalog.uoms[source.uom]
        row["uom"] = {"meta": self.meta("uom", uom.id), "name": uom.name}
        folder: Folder | None = self.catalog.folders.get(source.folder_id) if source.folder_id else None
        if folder:
            row["folder"] = {"meta": self.meta("productfolder", folder.id, "productFolder"), "name": folder.name,
                             "pathName": folder.path_name}
        if item.image_count:
            image_id = self.catalog.image_ids(item)[0]
            image = {"meta": {"href": f"{self.base}/download/{image_id}", "mediaType": "application/octet-stream"}}
            image.update(self.image_file(item, 0, image_id))
            image["miniature"] = {"href": f"{self.base}/download/{image_id}?miniature=true",
                                  "mediaType": "application/octet-stream",
                                  "downloadHref": f"{self.origin}/_files/miniature/{image_id}"}
            image["tiny"] = {"href": f"{self.origin}/_files/tiny/{image_id}.png", "mediaType": "application/octet-stream"}
            row["image"] = image
        row["externalCode"] = item.external_code
        return row

    def stock_bystore_row(self, line) -> dict:
        """A /report/stock/bystore row, one entry per store of the account."""
        # md/reports/_report_stock.md: "Размерность этого поля всегда равна количеству складов в системе"
        return {"meta": self.report_item_meta(line.item), "stockByStore": [
            {"meta": self.store_metas[i], "name": self.catalog.stores[i].name, "stock": number(stock),
             "reserve": number(reserve), "inTransit": number(in_transit)}
            for i, (stock, reserve, in_transit) in enumerate(line.per_store)]}

    # -- webhooks -----------------------------------------------------------------------------

    def webhook(self, hook: dict) -> dict:
        """A webhook as GET /entity/webhook shows it (md/dictionaries/_webhook.md examples, key order kept)."""
        body = {"meta": self.webhook_meta("webhook", hook["id"]), "id": hook["id"], "accountId": self.catalog.ids.account,
                "entityType": hook["entityType"], "url": hook["url"], "method": hook["method"],
                "enabled": hook["enabled"], "action": hook["action"]}
        if hook["action"] == "UPDATE":
            body["diffType"] = hook["diffType"]
        return body

    def webhook_stock(self, hook: dict) -> dict:
        """A stock webhook as GET /entity/webhookstock shows it (md/dictionaries/_webhookstock.md examples)."""
        return {"meta": self.webhook_meta("webhookstock", hook["id"]), "id": hook["id"],
                "accountId": self.catalog.ids.account, "stockType": hook["stockType"],
                "reportType": hook["reportType"], "url": hook["url"], "enabled": hook["enabled"]}

    def webhook_meta(self, kind: str, hook_id: str) -> dict:
        return {"href": f"{self.base}/entity/{kind}/{hook_id}", "metadataHref": f"{self.base}/entity/{kind}/metadata",
                "type": kind, "mediaType": JSON}

    # -- dictionaries -------------------------------------------------------------------------

    def folder(self, folder: Folder) -> dict:
        body = self.owned({"meta": self.meta("productfolder", folder.id), "id": folder.id,
                           "accountId": self.catalog.ids.account})
        body.update(updated=format_moment(folder.updated), name=folder.name, code=folder.code,
                    externalCode=folder.external_code, archived=folder.archived, pathName=folder.path_name)
        if folder.parent_id:
            body["productFolder"] = self.folder_ref(folder.parent_id)
        if folder.vat is None:
            body.update(useParentVat=True, effectiveVat=self.folder_vat(folder.parent_id), effectiveVatEnabled=True)
        else:
            body.update(vat=folder.vat, vatEnabled=True, useParentVat=False, effectiveVat=folder.vat,
                        effectiveVatEnabled=True)
        return body

    def store(self, index: int) -> dict:
        store = self.catalog.stores[index]
        href = f"{self.base}/entity/store/{store.id}"
        body = self.owned({"meta": self.store_metas[index], "id": store.id, "accountId": self.catalog.ids.account})
        body.update(updated=format_moment(store.updated), name=store.name, code=store.code,
                    externalCode=store.external_code, archived=False, address=store.address, pathName="")
        for part, kind in (("zones", "storezone"), ("slots", "slot")):
            body[part] = {"meta": {"href": f"{href}/{part}", "type": kind, "mediaType": JSON,
                                   "size": 0, "limit": 1000, "offset": 0}}
        return body

    def uom(self, index: int) -> dict:
        uom = self.catalog.uoms[index]
        return {"meta": self.meta("uom", uom.id), "id": uom.id, "updated": format_moment(uom.updated),
                "name": uom.name, "description": uom.description, "code": uom.code, "externalCode": uom.code}

    def currency(self) -> dict:
        currency_id = self.catalog.ids.currency
        return {"meta": self.meta("currency", currency_id), "id": currency_id, "system": True, "name": "руб",
                "fullName": "Российский рубль", "rate": 1.0, "multiplicity": 1, "indirect": False,
                "rateUpdateType": "manual", "code": "643", "isoCode": "RUB",
                "majorUnit": {"gender": "masculine", "s1": "рубль", "s2": "рубля", "s5": "рублей"},
                "minorUnit": {"gender": "feminine", "s1": "копейка", "s2": "копейки", "s5": "копеек"},
                "archived": False, "default": True}

    def company_settings(self) -> dict:
        return {"meta": {"href": f"{self.base}/context/companysettings",
                         "metadataHref": f"{self.base}/context/companysettings/metadata",
                         "type": "companysettings", "mediaType": JSON},
                "currency": self.currency(), "priceTypes": self.price_type_refs, "discountStrategy": "bySum",
                "globalOperationNumbering": True, "checkShippingStock": True, "checkMinPrice": True,
                "useRecycleBin": True, "useCompanyAddress": True, "companyAddress": "shop@emulator.local",
                "accountCountry": "RU"}

    def employee(self, login: str, created: datetime) -> dict:
        ids = self.catalog.ids
        body = self.owned({"meta": self.meta("employee", ids.employee), "id": ids.employee, "accountId": ids.account})
        body.update(updated=format_moment(created), name="Администратор", externalCode="emulator-admin",
                    archived=False, created=format_moment(created), uid=login, email="admin@emulator.local",
                    firstName="Иван", lastName="Администратор", fullName="Иван Администратор",
                    shortFio="Администратор И.")
        return body

    def organization(self, index: int, created: datetime) -> dict:
        org_id = self.catalog.ids.organizations[index]
        names = ("ООО \"Ромашка & Ко\"", "ИП Васильев Пётр Сергеевич")
        body = self.owned({"meta": self.meta("organization", org_id), "id": org_id,
                           "accountId": self.catalog.ids.account})
        body.update(updated=format_moment(created), name=names[index], externalCode=f"org-{index + 1}",
                    archived=False, created=format_moment(created), companyType="legal" if index == 0 else "entrepreneur",
                    legalTitle=names[index], inn=("7701234567", "770123456789")[index])
        return body
