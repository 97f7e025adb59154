"""Shared fixtures: the MoySklad emulator as a real HTTP server, a store file, the app on a temp dir."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from settings import FeedSettings, MoySkladSettings, Settings

SHARED = Path(__file__).resolve().parents[2] / "shared"
EMULATOR_TOKEN = "emu-token"


@pytest.fixture
def shared_fixtures() -> Path:
    """The vendor examples in ../shared (read by path, never copied); skip when absent."""
    path = SHARED / "fixtures"
    if not path.is_dir():
        pytest.skip("../shared/fixtures is not present")
    return path


@pytest.fixture
def emulator_factory():
    """Start emulators on loopback; every one is stopped after the test."""
    from emulator import EmulatorServer, generate_catalog

    started = []

    def start(products=300, seed=1, **kwargs):
        server = EmulatorServer(generate_catalog(products=products, seed=seed), port=0, token=EMULATOR_TOKEN,
                                login="admin@emu", password="emu-pass", **kwargs).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def emulator(emulator_factory):
    return emulator_factory()


def client_settings(server, **overrides) -> MoySkladSettings:
    """Settings pointing at an emulator, with short backoff so retry tests stay quick."""
    values = dict(base_url=server.base_url, token=EMULATOR_TOKEN, retry_base_delay=0.05, retry_max_delay=0.5,
                  read_timeout=10, connect_timeout=5)
    values.update(overrides)
    return MoySkladSettings(**values)


@pytest.fixture
def app_settings(tmp_path, emulator) -> Settings:
    return Settings(data_dir=tmp_path / "data", moysklad=client_settings(emulator),
                    feeds=(FeedSettings(name="main"),))


@pytest.fixture
def app(app_settings):
    from app import create_app

    return create_app(app_settings)


@pytest.fixture
def live_app(app):
    """The app under a real WSGI server on loopback; yields its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.fixture
def serve():
    """Serve an app built from settings on loopback (threaded); yields a function returning its base URL."""
    from app import create_app

    servers = []

    def start(settings: Settings) -> str:
        server = make_server("127.0.0.1", 0, create_app(settings), threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server in servers:
        server.shutdown()
