"""Seeded, compact in-memory MoySklad account: folders, stores, price types and the assortment.

Records are slotted dataclasses holding plain values; JSON is rendered per page by
emulator.render, so a 100,000-row catalog stays in the low hundreds of megabytes.

Size rule: ``generate_catalog(products=N)`` yields exactly N assortment rows in total
(products + variants + services + bundles, archived ones included), so a benchmark can
ask for an exact row count. Archived rows (~5%) are hidden by default like on MoySklad.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

MOSCOW = timezone(timedelta(hours=3))
# Generated timestamps spread over the year before this instant, so a seed always
# produces the same catalog; mutations stamp the real current Moscow time.
DEFAULT_AS_OF = datetime(2026, 11, 1, 12, 0, 0)

KIND_PRODUCT = "product"
KIND_VARIANT = "variant"
KIND_SERVICE = "service"
KIND_BUNDLE = "bundle"

MAX_IMAGES = 10
# Values of trackingType (spec components/schemas/TrackingType enum); NOT_TRACKED = no mandatory marking.
TRACKING_TYPES = (
    "BEER_ALCOHOL", "BICYCLE", "ELECTRONICS", "FOOD_SUPPLEMENT", "LP_CLOTHES", "LP_LINENS", "MEDICAL_DEVICES", "MILK",
    "NABEER", "NCP", "NOT_TRACKED", "OTP", "PERFUMERY", "PET_FOOD", "SANITIZER", "SEAFOOD", "SHOES", "SOFT_DRINKS",
    "TIRES", "TOBACCO", "VEGETABLE_OIL", "VETPHARMA", "WATER",
)
NOT_TRACKED = "NOT_TRACKED"
# The marked kinds the generator hands out, in turn, to one product in MARKED_EVERY.
MARKED_TYPES = ("SHOES", "TOBACCO", "LP_CLOTHES", "PERFUMERY", "MILK", "WATER", "ELECTRONICS", "TIRES")
MARKED_EVERY = 7
# XOR masks over the node part of an item UUID give its image ids, reversibly, without a table.
_IMAGE_MASKS = tuple((0x9E3779B97F4A + 7919 * n) & 0xFFFFFFFFFFFF for n in range(MAX_IMAGES))

PRICE_TYPE_NAMES = ("Цена продажи", "Оптовая цена", "Цена для маркетплейсов")
STORE_NAMES = ("Основной склад", "Склад Москва-Север", "Склад Санкт-Петербург")
# (name, description, code, standard MoySklad id when known)
UOM_DEFS = (
    ("шт", "Штука", "796", "19f1edc0-fc42-4001-94cb-c9ec9c62ec10"),
    ("кг", "Килограмм", "166", None),
    ("л", "Литр; кубический дециметр", "112", None),
    ("м", "Метр", "006", None),
    ("г", "Грамм", "163", None),
    ("упак", "Упаковка", "778", None),
)
UOM_PIECE, UOM_KG = 0, 1
# (name, type) of the custom product fields the generator fills.
ATTRIBUTE_DEFS = (
    ("Бренд", "string"),
    ("Материал", "string"),
    ("Вес нетто, кг", "double"),
    ("Гарантия, мес", "long"),
    ("Экспорт", "boolean"),
)
CHARACTERISTIC_NAMES = ("Цвет", "Размер")
COLORS = ("Красный", "Синий", "Чёрный", "Белый", "Зелёный", "Серый", "Бежевый")
SIZES = ("XS", "S", "M", "L", "XL", "XXL", "42", "44", "46", "48")

CATEGORY_WORDS = (
    "Одежда", "Обувь", "Электроника", "Дом & сад", "Инструменты", "Канцтовары", "Продукты",
    "Косметика", "Спорт", "Игрушки", "Автотовары", "Зоотовары", "Посуда", "Текстиль",
)
SUBCATEGORY_WORDS = (
    "Новинки", "Распродажа", "Базовые", "Премиум", "Сезонные", "Аксессуары", "Комплектующие",
    "Детские", "Мужские", "Женские", "Профессиональные", "Уценка",
)
PRODUCT_NOUNS = (
    "Футболка", "Кружка", "Чайник", "Рюкзак", "Кроссовки", "Куртка", "Шуруповёрт", "Лампа",
    "Блокнот", "Ручка", "Крем", "Мяч", "Кофе", "Чай", "Сковорода", "Полотенце", "Наушники",
    "Зарядное устройство", "Коврик", "Термос", "Носки", "Перчатки", "Фонарь", "Корм",
)
PRODUCT_ADJECTIVES = (
    "хлопковая", "керамическая", "стальной", "городской", "беговые", "зимняя", "аккумуляторный",
    "настольная", "в клетку", "гелевая", "увлажняющий", "футбольный", "молотый", "зелёный",
    "антипригарная", "махровое", "беспроводные", "быстрое", "йога", "дорожный", "шерстяные",
)
BRANDS = ("Nord", "Солнце", "Technika", "Домовой", "ProLine", "Уют", "Арктика", "Vega", "Лента")
MATERIALS = ("хлопок", "сталь", "пластик", "керамика", "дерево", "стекло", "полиэстер")
SERVICE_NAMES = ("Доставка курьером", "Сборка", "Упаковка подарочная", "Гравировка", "Установка")
BUNDLE_NAMES = ("Набор", "Комплект", "Подарочный набор", "Стартовый комплект")

# Every kind of hostile value appears in a deterministic share of products (one in
# HOSTILE_EVERY), cycling through this list so even small catalogs carry each kind.
HOSTILE_NAMES = (
    'Шампунь "Свежесть" & бальзам <2 в 1>',
    "Кофе 'Арабика' > 100% <script>alert(1)</script>",
    "Подарок 🎁 для неё 💐 ❤️",
    "Товар\x01с управляющим\x0bсимволом",
    "",
    "Очень длинное наименование " + "абвгдеёжзи" * 23,
    "Tom & Jerry's \"кружка\" <big>",
)
HOSTILE_EVERY = 12
# One good in NEVER_STOCKED_EVERY never took part in an operation (absent from every stock report,
# md/reports/_report_stock.md "Товары, которые были созданы и не участвовали в каких-либо операциях, не
# выводятся"); one in NOTHING_AVAILABLE_EVERY has all its stock reserved, available 0, which the default
# quantityMode=nonEmpty leaves out (DOMAIN.md "Details that are easy to get wrong").
NEVER_STOCKED_EVERY = 9
NOTHING_AVAILABLE_EVERY = 11
# One good in UNBOUND_RESERVE_EVERY (not of the two above) is also reserved by a customer order without a
# warehouse: md/reports/_report_stock.md «При разделении по складам строка без склада содержит резервы, не
# привязанные к складу» (the fixture stock_bystore_current_freeStock.json has such a row, storeId null).
UNBOUND_RESERVE_EVERY = 8
FRACTIONAL_QUANTITIES = (0.5, 1.5, 2.25, 0.25, 0.75)
HTML_DESCRIPTION = '<p>Описание с <b>HTML</b> &amp; <a href="https://example.com/?a=1&b=2">ссылкой</a></p><br>'
NAME_MAX = 255  # MoySklad caps names at 255 characters (spec maxLength)


def moscow_now() -> datetime:
    """Current Moscow wall time, naive, as MoySklad stamps `updated`."""
    return datetime.now(MOSCOW).replace(tzinfo=None)


def format_moment(moment: datetime) -> str:
    """MoySklad date format: YYYY-MM-DD HH:MM:SS.mmm (Moscow time)."""
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def ean13(body12: str) -> str:
    """Twelve digits plus the EAN-13 check digit."""
    total = sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(body12))
    return body12 + str((10 - total % 10) % 10)


@dataclass(slots=True)
class PriceType:
    id: str
    name: str
    external_code: str


@dataclass(slots=True)
class Store:
    id: str
    name: str
    code: str
    external_code: str
    address: str
    updated: datetime


@dataclass(slots=True)
class Uom:
    id: str
    name: str
    description: str
    code: str
    updated: datetime


@dataclass(slots=True)
class AttributeDef:
    id: str
    name: str
    type: str


@dataclass(slots=True)
class Folder:
    id: str
    name: str
    code: str
    external_code: str
    parent_id: str | None
    path_name: str  # path of the parent folders, "" for a root folder
    archived: bool
    updated: datetime
    vat: int | None  # None: the folder inherits VAT from its parent

    @property
    def depth(self) -> int:
        return self.path_name.count("/") + 2 if self.path_name else 1

    @property
    def full_path(self) -> str:
        """pathName of the items inside this folder."""
        return f"{self.path_name}/{self.name}" if self.path_name else self.name


@dataclass(slots=True)
class Item:
    """One assortment row; money in kopecks, stock as [stock, reserve, inTransit] per store."""

    kind: str
    id: str
    name: str
    code: str
    external_code: str
    updated: datetime
    archived: bool = False
    article: str = ""
    description: str = ""
    folder_id: str | None = None
    uom: int = UOM_PIECE
    vat: int = 20
    vat_enabled: bool = True
    use_parent_vat: bool = False
    sale_prices: tuple = ()  # one value per price type; () on a variant: take the product's
    buy_price: float | None = None
    min_price: float = 0.0
    cost: float = 0.0  # unit cost (себестоимость) reported as `price` by /report/stock
    weight: float = 0.0
    volume: float = 0.0
    barcodes: tuple = ()  # ((kind, value), ...)
    attributes: tuple = ()  # ((attribute index, value), ...)
    image_count: int = 0
    parent_id: str | None = None  # variant -> product
    characteristics: tuple = ()  # ((characteristic index, value), ...)
    variant_ids: list = field(default_factory=list)
    components: tuple = ()  # bundle: ((item id, quantity), ...)
    stock: list | None = None  # flat [stock, reserve, inTransit] * stores; None: services, bundles
    unbound_reserve: float | None = None  # reserved by orders without a warehouse; None: never had such a reserve
    stock_changed: datetime | None = None  # None: never took part in an operation (in no stock report)
    tracking_type: str = NOT_TRACKED  # products and bundles; a variant is marked as its product

    @property
    def stocked(self) -> bool:
        return self.stock is not None

    @property
    def operated(self) -> bool:
        """Took part in an operation: only such goods appear in stock reports."""
        return self.stock is not None and self.stock_changed is not None


@dataclass
class AccountIds:
    """Fixed identifiers of the emulated account (owner, group, organization, currency...)."""

    account: str
    employee: str
    group: str
    organizations: tuple
    currency: str


class Catalog:
    """Catalog state shared by the server threads; mutations bump `version` under a lock."""

    def __init__(self, ids: AccountIds, price_types, stores, uoms, attribute_defs, characteristic_ids,
                 folders, items, as_of: datetime):
        self.ids = ids
        self.price_types: list[PriceType] = price_types
        self.stores: list[Store] = stores
        self.uoms: list[Uom] = uoms
        self.attribute_defs: list[AttributeDef] = attribute_defs
        self.characteristic_ids: tuple = characteristic_ids
        self.folders: dict[str, Folder] = folders
        self.items: dict[str, Item] = items  # insertion order = stable assortment order
        self.as_of = as_of
        self.version = 0
        self.raw_overrides: dict[str, dict] = {}  # item id -> JSON fields sent verbatim (see corrupt_item)
        # image id -> bytes served (and size reported) instead of the generated PNG, e.g. a non-image or an oversize file
        self.image_bytes_override: dict[str, bytes] = {}
        self.lock = threading.RLock()
        self._next_code = len(items) + 1
        self.removed: dict[str, datetime] = {}  # deleted goods that had stock -> when (changedSince reports 0)
        self.recalculating: set[str] = set()  # goods whose stock is being recalculated (left out of reports)
        self._observers: list[Callable[[dict], None]] = []

    def __len__(self) -> int:
        return len(self.items)

    def store_index(self, store_id: str) -> int:
        for index, store in enumerate(self.stores):
            if store.id == store_id:
                return index
        raise KeyError(f"unknown store {store_id}")

    def parent_of(self, item: Item) -> Item | None:
        return self.items.get(item.parent_id) if item.parent_id else None

    def image_ids(self, item: Item) -> list[str]:
        base = uuid.UUID(item.id).int
        return [str(uuid.UUID(int=base ^ _IMAGE_MASKS[n])) for n in range(item.image_count)]

    def find_image(self, image_id: str) -> tuple[Item, int] | None:
        """(item, image index) for an image id, by undoing the id masks."""
        try:
            value = uuid.UUID(image_id).int
        except ValueError:
            return None
        for n, mask in enumerate(_IMAGE_MASKS):
            item = self.items.get(str(uuid.UUID(int=value ^ mask)))
            if item is not None and n < item.image_count:
                return item, n
        return None

    # -- observers (webhooks) --------------------------------------------------------------------

    def subscribe(self, observer: Callable[[dict], None]) -> None:
        """Call `observer(event)` after each change: {"type": "entity", "events": [...]} or {"type": "stock", ...}."""
        with self.lock:
            self._observers.append(observer)

    def unsubscribe(self, observer: Callable[[dict], None]) -> None:
        with self.lock:
            if observer in self._observers:
                self._observers.remove(observer)

    def _emit(self, event: dict) -> None:
        for observer in list(self._observers):
            observer(event)

    def _entity_event(self, events: list[tuple]) -> None:
        """One user action: [(action, kind, id, changed JSON fields), ...]."""
        self._emit({"type": "entity", "moment": moscow_now(), "events": events})

    def _stock_event(self, item_ids: list[str], physical: bool) -> None:
        """`physical`: the stock itself changed, not only reserve or inTransit (what webhookstock watches)."""
        self._emit({"type": "stock", "moment": moscow_now(), "ids": item_ids, "physical": physical})

    # -- mutations --------------------------------------------------------------------------------

    def _touch(self, item: Item) -> None:
        item.updated = moscow_now()
        self.version += 1

    def update_item(self, item_id: str, **fields) -> Item:
        """Change fields of an item (Item attribute names, or sale_price = first price type) and bump `updated`."""
        with self.lock:
            item = self.items[item_id]
            for name, value in fields.items():
                if name == "sale_price":
                    prices = list(item.sale_prices or (0.0,) * len(self.price_types))
                    prices[0] = float(value)
                    item.sale_prices = tuple(prices)
                elif name in ("kind", "id", "stock", "variant_ids", "parent_id") or not hasattr(item, name):
                    raise ValueError(f"field {name!r} cannot be updated")
                else:
                    if name == "archived" and value != item.archived and item.operated:
                        # an archived good shows in a changedSince report with 0 (md/reports/_report_stock.md,
                        # "если за запрашиваемый интервал был удален или архивирован товар ... остаток равный 0")
                        item.stock_changed = moscow_now()
                    setattr(item, name, value)
            self._touch(item)
            changed = sorted({JSON_FIELDS[name] for name in fields if JSON_FIELDS.get(name)})
            self._entity_event([("UPDATE", item.kind, item.id, changed)])
            return item

    def delete_item(self, item_id: str) -> None:
        """Remove an item (and a product's variants) from every list and report."""
        with self.lock:
            item = self.items.pop(item_id)
            gone = [item] + [self.items.pop(variant_id) for variant_id in item.variant_ids if variant_id in self.items]
            parent = self.parent_of(item)
            if parent is not None:
                parent.variant_ids.remove(item_id)
                self._touch(parent)
            now = moscow_now()
            for record in gone:
                if record.operated:
                    self.removed[record.id] = now  # reported as 0 by a changedSince report
            self.version += 1
            self._entity_event([("DELETE", record.kind, record.id, []) for record in gone])
            stocked = [record.id for record in gone if record.operated]
            if stocked:
                self._stock_event(stocked, physical=True)

    def add_product(self, name: str, price_kopecks: float, variants: int = 0, *, folder_id: str | None = None,
                    stock: float = 0.0) -> str:
        """Append a product (and `variants` variants, each with `stock` on the first store); returns its id."""
        # with stock 0 the new goods took part in no operation, so no stock report lists them yet
        with self.lock:
            now = moscow_now()
            operated_at = now if stock else None
            product = Item(
                kind=KIND_PRODUCT, id=str(uuid.uuid4()), name=name[:NAME_MAX], code=self._take_code(),
                external_code=uuid.uuid4().hex[:22], updated=now, article=f"NEW-{self._next_code}",
                folder_id=folder_id, sale_prices=(float(price_kopecks),) + (0.0,) * (len(self.price_types) - 1),
                buy_price=round(price_kopecks * 0.6), cost=round(price_kopecks * 0.6),
                barcodes=(("ean13", ean13(f"46{self._next_code:010d}")),),
                stock=[0.0] * (3 * len(self.stores)), stock_changed=None if variants else operated_at,
            )
            self.items[product.id] = product
            for n in range(variants):
                variant = Item(
                    kind=KIND_VARIANT, id=str(uuid.uuid4()), name=f"{name} ({COLORS[n % len(COLORS)]})"[:NAME_MAX],
                    code=self._take_code(), external_code=uuid.uuid4().hex[:22], updated=now,
                    article=product.article, parent_id=product.id, cost=product.cost,
                    characteristics=((0, COLORS[n % len(COLORS)]),), stock=[0.0] * (3 * len(self.stores)),
                    stock_changed=operated_at,
                )
                variant.stock[0] = float(stock)
                self.items[variant.id] = variant
                product.variant_ids.append(variant.id)
            if not variants:
                product.stock[0] = float(stock)
            self.version += 1
            self._entity_event([("CREATE", KIND_PRODUCT, product.id, [])])
            if product.variant_ids:
                self._entity_event([("CREATE", KIND_VARIANT, variant_id, []) for variant_id in product.variant_ids])
            if stock:
                self._stock_event(product.variant_ids or [product.id], physical=True)
            return product.id

    def corrupt_item(self, item_id: str, **raw_fields) -> None:
        """Send these JSON fields verbatim in the item's entity rows (e.g. name=None, salePrices="free"),
        to emulate malformed data a client must survive; MoySklad itself should never send it."""
        with self.lock:
            self.raw_overrides.setdefault(item_id, {}).update(raw_fields)
            self.version += 1

    def set_stock(self, item_id: str, store_id: str, stock: float | None = None, reserve: float | None = None,
                  in_transit: float | None = None) -> None:
        """Set a good's stock on one store as an operation would: stamps the stock change, not `updated`."""
        with self.lock:
            item = self.items[item_id]
            if item.stock is None:
                raise ValueError(f"{item.kind} {item_id} has no stock")
            base = 3 * self.store_index(store_id)
            physical = stock is not None and float(stock) != item.stock[base]
            for offset, value in enumerate((stock, reserve, in_transit)):
                if value is not None:
                    item.stock[base + offset] = float(value)
            item.stock_changed = moscow_now()
            self.version += 1
            self._stock_event([item_id], physical=physical)

    def reserve_without_store(self, item_id: str, reserve: float) -> None:
        """A customer order without a warehouse reserving ``reserve`` of a good (0 releases it), as an operation."""
        # doc: "Строка со "storeId":null соответствует резерву для Заказа Покупателя без указания склада"
        with self.lock:
            item = self.items[item_id]
            if item.stock is None:
                raise ValueError(f"{item.kind} {item_id} has no stock")
            item.unbound_reserve = float(reserve)
            item.stock_changed = moscow_now()
            self.version += 1
            self._stock_event([item_id], physical=False)

    def receive(self, item_id: str, store_id: str, quantity: float, unit_cost: float) -> None:
        """A supply (приёмка): ``quantity`` more on one store, bought at ``unit_cost`` kopecks. An operation:
        it stamps the stock change, not ``updated``. The unit cost the stock report gives (FIFO: what is in
        stock at what it cost) becomes the average over the stock held and the stock received."""
        with self.lock:
            item = self.items[item_id]
            if item.stock is None:
                raise ValueError(f"{item.kind} {item_id} has no stock")
            held = max(sum(item.stock[0::3]), 0.0)
            item.cost = (item.cost * held + unit_cost * quantity) / (held + quantity)
            item.stock[3 * self.store_index(store_id)] += float(quantity)
            item.stock_changed = moscow_now()
            self.version += 1
            self._stock_event([item_id], physical=True)

    def set_recalculating(self, item_id: str, recalculating: bool = True) -> None:
        """Mark a good's stock as being recalculated, which every stock report leaves out."""
        # md/reports/_report_stock.md "В отчет попадают только товары с уже пересчитанными остатками"
        with self.lock:
            if recalculating:
                self.recalculating.add(item_id)
            else:
                self.recalculating.discard(item_id)
            self.version += 1

    def _take_code(self) -> str:
        code = f"{self._next_code:05d}"
        self._next_code += 1
        return code


# Item attribute -> the JSON field a webhook lists in updatedFields (None: not an entity field).
JSON_FIELDS = {
    "name": "name", "description": "description", "code": "code", "external_code": "externalCode",
    "archived": "archived", "article": "article", "folder_id": "productFolder", "uom": "uom", "vat": "vat",
    "vat_enabled": "vatEnabled", "use_parent_vat": "useParentVat", "sale_prices": "salePrices",
    "sale_price": "salePrices", "buy_price": "buyPrice", "min_price": "minPrice", "cost": None, "weight": "weight",
    "volume": "volume", "barcodes": "barcodes", "attributes": "attributes", "image_count": "images",
    "characteristics": "characteristics", "components": "components", "tracking_type": "trackingType",
    "stock_changed": None,
}


def component_id(bundle_id: str, part_id: str) -> str:
    """A bundle component's own id, stable for the pair (bundle, component good)."""
    return str(uuid.uuid5(uuid.UUID(bundle_id), part_id))


def stock_totals(item: Item) -> tuple[float, float, float]:
    """(stock, reserve, inTransit) summed over stores."""
    values = item.stock or ()
    return sum(values[0::3]), sum(values[1::3]), sum(values[2::3])


class _Generator:
    """Builds a Catalog from one random.Random, in a fixed order of draws."""

    def __init__(self, rows: int, seed: int, as_of: datetime):
        self.rng = random.Random(seed)
        self.rows = rows
        self.as_of = as_of
        self.code = 0
        self.hostile = 0
        self.product_count = 0
        self.goods = 0  # stock-bearing goods made so far (products without variants, variants)
        self.marked = 0
        self.bundles = 0
        self.empty_folder: Folder | None = None
        self.full_archived_folder: Folder | None = None

    def uid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def ext_code(self) -> str:
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-"
        return "".join(self.rng.choice(alphabet) for _ in range(22))

    def moment(self) -> datetime:
        return self.as_of - timedelta(seconds=self.rng.randrange(365 * 86400), milliseconds=self.rng.randrange(1000))

    def next_code(self) -> str:
        self.code += 1
        return f"{self.code:05d}"

    def build(self) -> Catalog:
        ids = AccountIds(account=self.uid(), employee=self.uid(), group=self.uid(),
                         organizations=(self.uid(), self.uid()), currency=self.uid())
        price_types = [PriceType(self.uid(), name, self.uid()) for name in PRICE_TYPE_NAMES]
        stores = [Store(self.uid(), name, f"S{n + 1}", self.ext_code(), f"г. {name.split()[-1]}, ул. Складская, {n + 1}",
                        self.moment()) for n, name in enumerate(STORE_NAMES)]
        uoms = [Uom(std_id or self.uid(), name, desc, code, datetime(2012, 11, 2, 11, 7, 44))
                for name, desc, code, std_id in UOM_DEFS]
        attribute_defs = [AttributeDef(self.uid(), name, kind) for name, kind in ATTRIBUTE_DEFS]
        characteristic_ids = tuple(self.uid() for _ in CHARACTERISTIC_NAMES)
        folders = self.build_folders()
        items = self.build_items(list(folders.values()), len(stores))
        catalog = Catalog(ids, price_types, stores, uoms, attribute_defs, characteristic_ids, folders, items, self.as_of)
        catalog._next_code = self.code + 1
        return catalog

    def build_folders(self) -> dict[str, Folder]:
        rng = self.rng
        total = max(3, self.rows // 20)
        folders: list[Folder] = []
        roots = max(2, total // 5)
        shallow: list[Folder] = []  # folders that may still get children (levels 1-2)
        for n in range(total):
            # roots first, then children of level-1/2 folders: a 3-level tree
            parent = rng.choice(shallow[-60:]) if n >= roots else None
            words = CATEGORY_WORDS if parent is None else SUBCATEGORY_WORDS
            name = f"{words[n % len(words)]} {n // len(words) + 1}" if n >= len(words) else words[n]
            folders.append(Folder(
                id=self.uid(), name=name, code=f"F{n + 1:04d}", external_code=self.ext_code(),
                parent_id=parent.id if parent else None, path_name=parent.full_path if parent else "",
                archived=rng.random() < 0.05 and n >= roots, updated=self.moment(),
                vat=rng.choice((20, 10, 0)) if parent is None or rng.random() < 0.2 else None,
            ))
            if folders[-1].depth <= 2:
                shallow.append(folders[-1])
        # an archived folder left empty (the last one: nothing can be under it) and an archived folder that
        # still holds goods on sale (spec ProductFolder.archived and Product.archived are separate flags)
        self.empty_folder, self.full_archived_folder = folders[-1], folders[-2]
        self.empty_folder.archived = self.full_archived_folder.archived = True
        return {f.id: f for f in folders}

    def product_name(self) -> str:
        rng = self.rng
        self.product_count += 1
        if self.product_count % HOSTILE_EVERY == 5:
            name = HOSTILE_NAMES[self.hostile % len(HOSTILE_NAMES)]
            self.hostile += 1
            return name[:NAME_MAX]
        return f"{rng.choice(PRODUCT_NOUNS)} {rng.choice(PRODUCT_ADJECTIVES)} {rng.choice(BRANDS)} {rng.randrange(1, 1000)}"

    def prices(self, base: float) -> tuple:
        rng = self.rng
        wholesale = round(base * rng.uniform(0.75, 0.9)) if rng.random() < 0.8 else 0
        marketplace = round(base * rng.uniform(1.05, 1.25)) if rng.random() < 0.6 else 0
        return (float(base), float(wholesale), float(marketplace))

    def stock(self, stores: int, fractional: bool) -> list:
        rng = self.rng
        values = []
        for _ in range(stores):
            roll = rng.random()
            if roll < 0.3:
                stock = 0.0
            elif roll < 0.36:
                stock = -float(rng.randrange(1, 5))
            else:
                stock = round(rng.uniform(0.5, 300), 3) if fractional else float(rng.randrange(1, 300))
            reserve = float(rng.randrange(0, 5)) if stock > 5 and rng.random() < 0.3 else 0.0
            in_transit = float(rng.randrange(1, 50)) if rng.random() < 0.15 else 0.0
            values += [stock, reserve, in_transit]
        return values

    def barcodes(self) -> tuple:
        rng = self.rng
        codes = [("ean13", ean13(f"20{rng.randrange(10 ** 10):010d}"))]
        if rng.random() < 0.2:
            codes.append(("code128", f"C128-{rng.randrange(10 ** 8):08d}"))
        if rng.random() < 0.05:
            codes = []
        return tuple(codes)

    def attributes(self) -> tuple:
        rng = self.rng
        values = []
        if rng.random() < 0.7:
            values.append((0, rng.choice(BRANDS)))
        if rng.random() < 0.4:
            values.append((1, rng.choice(MATERIALS)))
        if rng.random() < 0.5:
            values.append((2, round(rng.uniform(0.05, 25), 3)))
        if rng.random() < 0.3:
            values.append((3, rng.choice((6, 12, 24, 36))))
        if rng.random() < 0.5:
            values.append((4, rng.random() < 0.5))
        return tuple(values)

    def vat(self, item: Item) -> None:
        rng = self.rng
        roll = rng.random()
        if roll < 0.1:
            item.vat_enabled, item.vat = False, 0
        elif roll < 0.2:
            item.vat = 0
        elif roll < 0.35:
            item.vat = 10
        elif roll < 0.45:
            item.use_parent_vat = True

    def goods_stock(self, stores: int, fractional: bool) -> tuple[list, bool, float | None]:
        """(stock figures, took part in an operation, reserve without a warehouse) of the next stock-bearing good."""
        self.goods += 1
        if self.goods % NEVER_STOCKED_EVERY == 4:
            return [0.0] * (3 * stores), False, None
        values = self.stock(stores, fractional)
        if self.goods % NOTHING_AVAILABLE_EVERY == 6:
            # everything on hand is reserved: stock = reserve, nothing in transit, so available is 0
            values[0] = max(values[0], float(self.rng.randrange(1, 20)))
            for index in range(stores):
                values[3 * index] = max(values[3 * index], 0.0)
                values[3 * index + 1], values[3 * index + 2] = values[3 * index], 0.0
            return values, True, None
        # no random draw: the goods and their figures stay what each seed gave before
        unbound = self.goods % UNBOUND_RESERVE_EVERY == 3
        return values, True, float(1 + self.goods // UNBOUND_RESERVE_EVERY % 5) if unbound else None

    def tracking_type(self) -> str:
        if self.product_count % MARKED_EVERY != 3:
            return NOT_TRACKED
        self.marked += 1
        return MARKED_TYPES[(self.marked - 1) % len(MARKED_TYPES)]

    def components(self, goods: list[Item], services: list[Item]) -> tuple:
        """2-3 goods, and in turn an archived one, one with nothing free, a fractional quantity, a variant, a service."""
        # md/dictionaries/_bundle.md: components are goods, services, variants; DOMAIN.md: an archived or
        # out-of-stock component makes a bundle unsellable
        rng = self.rng
        candidates = goods[-200:]
        parts = rng.sample(candidates, rng.randrange(2, 4))
        case = self.bundles % 5
        self.bundles += 1
        pools = {
            0: [g for g in candidates if g.archived],
            1: [g for g in candidates if g.kind != KIND_PRODUCT or not g.variant_ids
                if not g.operated or sum(g.stock[0::3]) - sum(g.stock[1::3]) <= 0],
            3: [g for g in candidates if g.kind == KIND_VARIANT],
            4: services[-50:],
        }
        pool = [g for g in pools.get(case, ()) if g not in parts]
        if pool:
            parts[-1] = rng.choice(pool)
        quantities = [float(rng.randrange(1, 4)) for _ in parts]
        if case == 2:
            quantities[0] = rng.choice(FRACTIONAL_QUANTITIES)
        return tuple((part.id, quantity) for part, quantity in zip(parts, quantities))

    def build_items(self, folders: list[Folder], stores: int) -> dict[str, Item]:
        rng = self.rng
        items: dict[str, Item] = {}
        goods: list[Item] = []
        services: list[Item] = []
        usable = [f for f in folders if f is not self.empty_folder]
        while len(items) < self.rows:
            remaining = self.rows - len(items)
            roll = rng.random()
            updated = self.moment()
            folder = rng.choice(usable) if rng.random() < 0.95 else None
            if roll < 0.05:
                item = Item(kind=KIND_SERVICE, id=self.uid(), name=f"{rng.choice(SERVICE_NAMES)} {rng.randrange(1, 100)}",
                            code=self.next_code(), external_code=self.ext_code(), updated=updated,
                            folder_id=folder.id if folder else None, sale_prices=self.prices(rng.randrange(100, 5000) * 100),
                            buy_price=float(rng.randrange(0, 2000) * 100), archived=rng.random() < 0.05,
                            barcodes=self.barcodes()[:1], attributes=self.attributes()[:2])
                self.vat(item)
                items[item.id] = item
                services.append(item)
                continue
            if roll < 0.08 and len(goods) >= 3:
                item = Item(kind=KIND_BUNDLE, id=self.uid(), name=f"{rng.choice(BUNDLE_NAMES)} №{rng.randrange(1, 1000)}",
                            code=self.next_code(), external_code=self.ext_code(), updated=updated,
                            article=f"B-{rng.randrange(10 ** 6):06d}", folder_id=folder.id if folder else None,
                            sale_prices=self.prices(rng.randrange(500, 20000) * 100), archived=rng.random() < 0.05,
                            weight=round(rng.uniform(0.1, 5), 3), volume=round(rng.uniform(0.001, 0.05), 4),
                            barcodes=self.barcodes(), image_count=rng.randrange(0, 3),
                            components=self.components(goods, services))
                self.vat(item)
                items[item.id] = item
                continue
            variant_count = min(rng.choice((0, 0, 0, 0, 0, 0, 1, 2, 3, 5)), remaining - 1)
            fractional = rng.random() < 0.15
            base = float(rng.randrange(50, 100000) * 100 + rng.choice((0, 0, 50, 99)))
            first_product = self.product_count == 0
            if first_product:
                folder = self.full_archived_folder  # live goods inside an archived folder
            product = Item(
                kind=KIND_PRODUCT, id=self.uid(), name=self.product_name(), code=self.next_code(),
                external_code=self.ext_code(), updated=updated, article=f"A-{rng.randrange(10 ** 7):07d}",
                folder_id=folder.id if folder else None, uom=UOM_KG if fractional else UOM_PIECE,
                sale_prices=self.prices(base), buy_price=float(round(base * rng.uniform(0.4, 0.7))),
                min_price=float(round(base * 0.3)) if rng.random() < 0.3 else 0.0,
                cost=float(round(base * rng.uniform(0.35, 0.75))) if rng.random() < 0.9 else 0.0,
                weight=round(rng.uniform(0.05, 30), 3), volume=round(rng.uniform(0.0001, 0.2), 4),
                barcodes=self.barcodes(), attributes=self.attributes(), image_count=rng.randrange(0, MAX_IMAGES + 1),
                archived=rng.random() < 0.05 and not first_product, tracking_type=self.tracking_type(),
            )
            if product.name == "" or self.product_count % 4 == 0:
                product.description = HTML_DESCRIPTION if self.product_count % 8 == 0 else "Описание товара: " + product.name
            self.vat(product)
            if variant_count:
                product.stock = [0.0] * (3 * stores)  # all its stock is on its variants
            else:
                product.stock, operated, product.unbound_reserve = self.goods_stock(stores, fractional)
                product.stock_changed = updated if operated else None
            items[product.id] = product
            goods.append(product)
            sizes = rng.sample(SIZES, min(variant_count, len(SIZES)))
            for n in range(variant_count):
                color = COLORS[(n + self.code) % len(COLORS)]
                characteristics = ((0, color), (1, sizes[n])) if rng.random() < 0.7 else ((0, color),)
                own_prices = rng.random() < 0.5
                stock, operated, unbound_reserve = self.goods_stock(stores, fractional)
                variant = Item(
                    kind=KIND_VARIANT, id=self.uid(),
                    name=f"{product.name} ({', '.join(v for _, v in characteristics)})"[:NAME_MAX],
                    code=self.next_code(), external_code=self.ext_code(), updated=self.moment(),
                    article=product.article, parent_id=product.id,
                    sale_prices=self.prices(base + rng.randrange(0, 50) * 100) if own_prices else (),
                    buy_price=product.buy_price if rng.random() < 0.5 else None,
                    cost=float(round(product.cost * rng.uniform(0.9, 1.1))), barcodes=self.barcodes(),
                    characteristics=characteristics, image_count=rng.randrange(0, 3),
                    archived=product.archived or rng.random() < 0.02,
                    stock=stock, stock_changed=updated if operated else None, unbound_reserve=unbound_reserve,
                )
                items[variant.id] = variant
                product.variant_ids.append(variant.id)
                goods.append(variant)
        return items


def generate_catalog(products: int = 200, seed: int = 1, as_of: datetime | None = None) -> Catalog:
    """Deterministic catalog of exactly `products` assortment rows for a given (products, seed, as_of)."""
    if products < 1:
        raise ValueError("products must be >= 1")
    return _Generator(products, seed, as_of or DEFAULT_AS_OF).build()
