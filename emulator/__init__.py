"""MoySklad JSON API 1.2 emulator: a seeded catalog served over real HTTP with switchable faults.

    from emulator import generate_catalog, EmulatorServer
    catalog = generate_catalog(products=200, seed=1)   # exactly 200 assortment rows
    srv = EmulatorServer(catalog, port=0, token="emu-token", webhook_interval=0.2).start()
    srv.base_url  # http://127.0.0.1:<port>/api/remap/1.2
    srv.faults.error_rate = 0.2
    catalog.set_stock(item_id, catalog.stores[0].id, stock=5)  # an operation: stock webhooks follow
    srv.webhooks.deliveries  # every webhook POST attempt: status, elapsed, payload
    srv.stop()

Catalog structure (emulator.catalog): `items` (dict id -> Item, in assortment order),
`folders` (dict id -> Folder), `stores`, `price_types`, `uoms` (lists), `attribute_defs`.
Stock reports follow emulator.stock, webhooks emulator.webhooks.

The retailCRM API v5 emulator (stock and price uploads, ICML-fed offers) is `emulator.retailcrm.RetailCrmEmulator`.
"""

from __future__ import annotations

import importlib

# Where each public name lives. They are imported on first use (PEP 562), so that the app can register the
# `emulator` commands (emulator.cli) without loading the emulators.
_MODULES = {"ApiError": "protocol", "Catalog": "catalog", "EmulatorServer": "server", "Faults": "server",
            "Folder": "catalog", "Item": "catalog", "PriceType": "catalog", "RetailCrmEmulator": "retailcrm",
            "Store": "catalog", "Uom": "catalog", "WebhookHub": "webhooks", "generate_catalog": "catalog", "run": "cli"}
__all__ = ["ApiError", "Catalog", "EmulatorServer", "Faults", "Folder", "Item", "PriceType", "RetailCrmEmulator", "Store",
           "Uom", "WebhookHub", "generate_catalog", "run"]


def __getattr__(name: str):
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_MODULES[name]}", __name__), name)
