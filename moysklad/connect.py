"""Where the MoySklad client points: the real API, or the bundled emulator in demo mode."""

from __future__ import annotations

import dataclasses
import threading

from core.settings import EmulatorSettings, MoySkladSettings
from moysklad.client import MoySkladClient

_embedded = {}
_embedded_lock = threading.Lock()


def embedded_emulator(options: EmulatorSettings):
    """One emulator per process for the demo, generated from the configured seed."""
    from emulator import EmulatorServer, generate_catalog

    key = (options.products, options.seed)
    with _embedded_lock:
        server = _embedded.get(key)
        if server is None:
            server = EmulatorServer(generate_catalog(products=options.products, seed=options.seed), port=0).start()
            server.faults.latency_ms = options.latency_ms
            _embedded[key] = server
        return server


def open_client(settings: MoySkladSettings) -> MoySkladClient:
    """A client for the configured account (starting the demo emulator when configured)."""
    if settings.emulator is not None:
        server = embedded_emulator(settings.emulator)
        settings = dataclasses.replace(settings, base_url=server.base_url, token=server.token, login="", password="")
    return MoySkladClient(settings)
