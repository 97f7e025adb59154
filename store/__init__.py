"""The only place that runs SQL: the catalog store, its runs, orders, the picture cache, the exchange log."""

from store.catalog import (CatalogReader, CatalogRun, CatalogStore, OfferRow, RenderReader, chunks, open_catalog,
                           unpack_offer)
from store.database import StoreBusy, StoreError
from store.exchange_log import ExchangeLog
from store.runs import Run, RunStats

__all__ = ["CatalogReader", "CatalogRun", "CatalogStore", "ExchangeLog", "OfferRow", "RenderReader", "Run", "RunStats",
           "StoreBusy", "StoreError",
           "chunks", "open_catalog", "unpack_offer"]
