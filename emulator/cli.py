"""Blocking runners and the `emulator run` / `emulator retailcrm` click commands (a Flask CLI group in app.py)."""

from __future__ import annotations

import contextlib

import click

from .protocol import STOCK_INTERVAL

# The emulators are imported by the runners: `flask --app app` registers these commands without loading them.


def run(port: int = 8081, products: int = 1000, seed: int = 1, host: str = "127.0.0.1", latency_ms: int = 0,
        error_rate: float = 0.0, token: str = "emu-token", login: str = "admin@emu", password: str = "emu-pass",
        webhook_interval: float = STOCK_INTERVAL, other_tokens: int = 0) -> None:
    """Serve a generated catalog until interrupted, printing where and how to connect."""
    from .catalog import generate_catalog
    from .server import EmulatorServer

    server = EmulatorServer(generate_catalog(products=products, seed=seed), host=host, port=port, token=token,
                            login=login, password=password, webhook_interval=webhook_interval,
                            other_tokens=numbered_tokens(token, other_tokens))
    server.faults.latency_ms = latency_ms
    server.faults.error_rate = error_rate
    print(f"MoySklad emulator: {server.base_url}", flush=True)
    print(f"  Bearer token: {token}   Basic: {login} / {password}", flush=True)
    if other_tokens:
        print(f"  {other_tokens} more users, each with its own rate limit: {token}-1 ... {token}-{other_tokens}", flush=True)
    print(f"  {products} assortment rows, seed {seed}; faults/stats at {server.origin}/_emulator/", flush=True)
    server.serve_until_interrupted()


def numbered_tokens(token: str, count: int) -> tuple[str, ...]:
    """The tokens of ``count`` more users: ``<token>-1`` … ``<token>-<count>``."""
    return tuple(f"{token}-{number}" for number in range(1, count + 1))


def run_retailcrm(port: int = 8082, host: str = "127.0.0.1", api_key: str = "rcrm-key", sites: tuple = ("shop",),
                  icml: str | None = None) -> None:
    """Serve a retailCRM account until interrupted, printing where and with which key to connect."""
    from .retailcrm import RetailCrmEmulator

    server = RetailCrmEmulator(host=host, port=port, api_key=api_key, sites=sites)
    loaded = server.load_icml(icml, sites[0]) if icml else 0
    print(f"retailCRM emulator: {server.base_url} (API at {server.api_url})", flush=True)
    print(f"  X-API-Key: {api_key}   sites: {', '.join(sites)}   stores: {', '.join(server.store_codes)}   "
          f"price types: {', '.join(server.price_type_codes)}", flush=True)
    print(f"  {loaded} offers known from the ICML for {sites[0]}; state/faults/stats at {server.base_url}/_emulator/",
          flush=True)
    server.serve_until_interrupted()


@click.group("emulator")
def emulator_cli() -> None:
    """MoySklad JSON API 1.2 and retailCRM API v5 emulators."""


@emulator_cli.command("run")
@click.option("--port", default=8081, show_default=True, type=int)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--products", default=1000, show_default=True, type=int, help="Total assortment rows.")
@click.option("--seed", default=1, show_default=True, type=int)
@click.option("--latency-ms", default=0, show_default=True, type=int)
@click.option("--error-rate", default=0.0, show_default=True, type=float)
@click.option("--token", default="emu-token", show_default=True)
@click.option("--login", default="admin@emu", show_default=True)
@click.option("--password", default="emu-pass", show_default=True)
@click.option("--webhook-interval", default=STOCK_INTERVAL, show_default=True, type=float,
              help="Seconds between stock webhook batches (MoySklad: 60-300).")
@click.option("--other-tokens", default=0, show_default=True, type=int,
              help="Accept N more tokens, <token>-1 ... <token>-N, each a user with its own rate limit.")
def run_command(port, host, products, seed, latency_ms, error_rate, token, login, password, webhook_interval,
                other_tokens) -> None:
    """Serve a seeded catalog until Ctrl+C."""
    with _listening(host, port):
        run(port=port, products=products, seed=seed, host=host, latency_ms=latency_ms, error_rate=error_rate,
            token=token, login=login, password=password, webhook_interval=webhook_interval, other_tokens=other_tokens)


@emulator_cli.command("retailcrm")
@click.option("--port", default=8082, show_default=True, type=int)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--api-key", default="rcrm-key", show_default=True)
@click.option("--site", "sites", multiple=True, default=("shop",), show_default=True,
              help="Shop code; repeat for more.")
@click.option("--icml", type=click.Path(exists=True, dir_okay=False), help="Feed whose offers the first shop knows.")
def retailcrm_command(port, host, api_key, sites, icml) -> None:
    """Serve a retailCRM account (stock and price uploads) until Ctrl+C."""
    from lxml import etree

    try:
        with _listening(host, port):
            run_retailcrm(port=port, host=host, api_key=api_key, sites=sites, icml=icml)
    except etree.XMLSyntaxError as exc:
        raise click.ClickException(f"--icml {icml} is not an ICML (XML) file: {exc}") from None


@contextlib.contextmanager
def _listening(host: str, port: int):
    """An address the emulator cannot listen on is one line naming --port, not a traceback."""
    try:
        yield
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}; "
                                   "choose another --port (or stop what listens there)") from None
