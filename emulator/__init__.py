"""MoySklad JSON API 1.2 emulator: a seeded catalog served over real HTTP with switchable faults.

    from emulator import generate_catalog, EmulatorServer
    catalog = generate_catalog(products=200, seed=1)   # exactly 200 assortment rows
    srv = EmulatorServer(catalog, port=0, token="emu-token").start()
    srv.base_url  # http://127.0.0.1:<port>/api/remap/1.2
    srv.faults.error_rate = 0.2
    srv.stop()

Catalog structure (emulator.catalog): `items` (dict id -> Item, in assortment order),
`folders` (dict id -> Folder), `stores`, `price_types`, `uoms` (lists), `attribute_defs`.

The retailCRM API v5 emulator (stock and price uploads, ICML-fed offers) is `emulator.retailcrm.RetailCrmEmulator`.
"""

from .catalog import Catalog, Folder, Item, PriceType, Store, Uom, generate_catalog
from .server import EmulatorServer, Faults
from .cli import run
from .retailcrm import RetailCrmEmulator

__all__ = ["Catalog", "EmulatorServer", "Faults", "Folder", "Item", "PriceType", "RetailCrmEmulator", "Store",
           "Uom", "generate_catalog", "run"]
