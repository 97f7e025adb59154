"""Shared fixtures: the MoySklad emulator as a real HTTP server, a store file, the app on a temp dir.

Helpers that benchmarks use too (free ports, gunicorn, the emulator's credentials) are in
:mod:`emulator.harness`.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from core.settings import FeedSettings, Settings
from emulator.harness import EMULATOR_TOKEN, SHARED, Gunicorn, client_settings, start_emulator
from store import open_catalog


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
    started = []

    def start(products=300, seed=1, **kwargs):
        server = start_emulator(products, seed, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def emulator(emulator_factory):
    return emulator_factory()


@pytest.fixture
def store(tmp_path):
    """A fresh catalog store file, closed after the test."""
    with open_catalog(tmp_path / "data" / "catalog.sqlite") as store:
        yield store


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


@pytest.fixture
def gunicorn(tmp_path, emulator_factory):
    """Start ``gunicorn --workers N wsgi:app`` serving an emulator's catalog in one feed built every 3 s:
    ``gunicorn(workers=3, feed_options="token: ...", environ={...})``; stopped after the test."""
    instances = []

    def start(workers=3, feed_options: str = "", environ: dict | None = None):
        server = emulator_factory(products=60)
        config = (f"data_dir: data\nmoysklad:\n  base_url: {server.base_url}\n  token: {EMULATOR_TOKEN}\n"
                  f"  retry_base_delay: 0.05\nfeeds:\n  - name: main\n    pictures: none\n    interval_minutes: 0.05\n"
                  + "".join(f"    {line}\n" for line in feed_options.splitlines()))
        instance = Gunicorn(tmp_path, config, workers, environ=environ)
        instances.append(instance)
        return instance

    yield start
    for instance in instances:
        if instance.process.poll() is None:
            instance.stop()


@pytest.fixture
def build_spans(monkeypatch) -> list[tuple[float, float, str, str]]:
    """(start, end, account, feed) of every build the scheduler runs, filled in as they end: the real
    builds, timed."""
    import time

    import scheduler

    spans: list[tuple[float, float, str, str]] = []
    real_build = scheduler.build_feed

    def timed_build(settings, feed, **kwargs):
        started = time.monotonic()
        try:
            return real_build(settings, feed, **kwargs)
        finally:
            spans.append((started, time.monotonic(), settings.account, feed.name))

    monkeypatch.setattr(scheduler, "build_feed", timed_build)
    return spans
