"""``flask --app app moysklad check|sync``: the MoySklad side from the command line."""

from __future__ import annotations

import sys

import click
from flask import current_app
from flask.cli import AppGroup

from moysklad.check import check_connection
from moysklad.connect import open_client
from moysklad.errors import MoySkladError
from moysklad.sync import sync_catalog
from store import StoreError, open_catalog

moysklad_cli = AppGroup("moysklad", help="Check the MoySklad connection and sync the catalog.")


ACCOUNT_OPTION = click.option("--account", default="", metavar="NAME",
                              help="One of accounts[] in the config; the main account when left out.")


def _account(name: str):
    """The settings of the account named on the command line (exits 2 naming the known ones)."""
    views = {view.account: view for view in current_app.config["SETTINGS"].every_account()}
    if name not in views:
        known = ", ".join(repr(n) if n else "(main)" for n in views)
        click.echo(f"No account named {name!r} (accounts: {known})", err=True)
        sys.exit(2)
    return views[name]


@moysklad_cli.command("check")
@ACCOUNT_OPTION
def check_command(account: str):
    """Verify credentials and permissions; print the company, currency, price types, stores and counts."""
    settings = _account(account)
    with open_client(settings.moysklad) as client:
        report = check_connection(client)
    width = max(len(label) for label, _ in report.facts) + 2
    for label, value in report.facts:
        click.echo(f"  {label + ' ':.<{width}} {value}")
    for problem in report.problems:
        click.echo(f"  PROBLEM: {problem}", err=True)
    if not report.ok:
        click.echo("MoySklad connection check failed: fix the problems above and run it again.", err=True)
        sys.exit(1)
    click.echo("MoySklad connection OK.")


@moysklad_cli.command("sync")
@click.option("--full", is_flag=True, help="Read everything and mark what MoySklad no longer has as removed.")
@ACCOUNT_OPTION
def sync_command(full: bool, account: str):
    """Pull the catalog from MoySklad into the catalog store (incremental unless --full or due)."""
    settings = _account(account)
    ms = settings.moysklad
    try:
        with open_client(ms) as client, open_catalog(settings.store_path) as store:
            result = sync_catalog(
                client, store, full=full, overlap_minutes=ms.overlap_minutes, full_sync_hours=ms.full_sync_hours,
                progress=lambda stage, count: click.echo(f"  {stage}: {count}", err=True),
            )
    except (MoySkladError, StoreError) as exc:
        click.echo(f"Sync failed, the catalog store is unchanged: {exc}", err=True)
        sys.exit(1)
    counts = result.counts
    click.echo(
        f"{result.mode} sync #{result.run_id} done in {result.seconds:.1f}s: "
        f"{counts.get('products', 0)} products, {counts.get('variants', 0)} variants, "
        f"{counts.get('services', 0)} services, {counts.get('bundles', 0)} bundles, "
        f"{counts.get('categories', 0)} groups; {counts.get('skipped', 0)} skipped; "
        f"{result.requests} requests, {result.throttled} throttled, {result.retries} retried; "
        f"next changes from {result.bookmark} (Moscow time)"
    )
    removed = {k[len('removed_'):]: v for k, v in counts.items() if k.startswith("removed_") and v}
    if removed:
        click.echo("marked removed: " + ", ".join(f"{v} {k}" for k, v in removed.items()))
    if counts.get("reconcile_postponed"):
        click.echo("the catalog changed during the run: deletions will be reconciled on the next full sync")
