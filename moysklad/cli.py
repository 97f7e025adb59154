"""``flask --app app moysklad check|sync``: the MoySklad side from the command line."""

from __future__ import annotations

import dataclasses
import sys

import click
from flask import current_app
from flask.cli import AppGroup

from core.account_context import working_for
from core.settings import MAIN_ACCOUNT_LABEL, account_key, token_variable
from moysklad.errors import MoySkladError

# Feature modules are imported by the commands that use them: `flask --app app` starts without loading them.

# The check tries each request once with short timeouts: a person waits at the terminal (builds keep their retries).
CHECK_CONNECT_TIMEOUT = 5.0
CHECK_READ_TIMEOUT = 20.0

moysklad_cli = AppGroup("moysklad", help="Check the MoySklad connection and sync the catalog.")


ACCOUNT_OPTION = click.option("--account", default="", metavar="NAME",
                              help=f"One of accounts[] in the config; the main account ({MAIN_ACCOUNT_LABEL}) when left out.")


def _account(name: str):
    """The settings of the account named on the command line (exits 2 naming the known ones)."""
    settings = current_app.config["SETTINGS"]
    view = settings.account_named(name)
    if view is None:
        known = ", ".join(other.account or MAIN_ACCOUNT_LABEL for other in settings.every_account())
        click.echo(f"No account named {name!r} (accounts: {known})", err=True)
        sys.exit(2)
    return view


def _which_account(name: str) -> str:
    """The account a command is about and how to reach the others, when the instance serves several ('' otherwise)."""
    accounts = [view.account for view in current_app.config["SETTINGS"].every_account()]
    if len(accounts) == 1:
        return ""
    others = [other or MAIN_ACCOUNT_LABEL for other in accounts if other != name]
    how = f"--account NAME, the {MAIN_ACCOUNT_LABEL} one without --account" if name else "--account NAME"
    return f"account {name or MAIN_ACCOUNT_LABEL} (the others: {', '.join(others)}; name one with {how})"


def _require_credentials(settings, doing: str) -> None:
    """Exit 1 saying so when the account has no MoySklad credentials (an install fed by 1C alone): a request to
    MoySklad could only be refused, after minutes of retries."""
    ms = settings.moysklad
    if settings.is_demo or ms.token or (ms.login and ms.password):
        return
    account = settings.account
    click.echo(f"No MoySklad credentials are configured ({account_key(account, 'moysklad.token')} or "
               f"{token_variable(account)}, or a login and password): no feed of this account reads the MoySklad "
               f"API, so there is nothing to {doing}.", err=True)
    sys.exit(1)


@moysklad_cli.command("check")
@ACCOUNT_OPTION
def check_command(account: str):
    """Verify the address, credentials and permissions and every name the feeds use; print what the account holds."""
    from moysklad.check import check_connection
    from moysklad.connect import open_client
    from moysklad.sync import account_conflict, client_address, held_account
    from store import open_catalog

    settings = _account(account)
    account = settings.account
    which = _which_account(account)
    if which:
        click.echo(f"Checking MoySklad for {which}.")
    ms = settings.moysklad
    if settings.is_demo:
        click.echo(settings.demo_notice)
    _require_credentials(settings, "check")
    quick = dataclasses.replace(ms, max_retries=0, connect_timeout=min(ms.connect_timeout, CHECK_CONNECT_TIMEOUT),
                                read_timeout=min(ms.read_timeout, CHECK_READ_TIMEOUT))
    with working_for(account), open_client(quick) as client:
        report = check_connection(client, settings.feeds, account)
        address = client_address(client)
    if report.account and settings.store_path.exists():
        with open_catalog(settings.store_path) as store:
            conflict = account_conflict(settings.store_path, held_account(store), {**report.account, "address": address})
        if conflict:
            report.problems.append(f"a sync would be refused: {conflict}")
    width = max(len(label) for label, _ in report.facts) + 2
    for label, value in report.facts:
        click.echo(f"  {label + ' ':.<{width}} {value}")
    for problem in report.problems:
        click.echo(f"  PROBLEM: {problem}", err=True)
    of = f" of account {account or MAIN_ACCOUNT_LABEL}" if which else ""
    if not report.ok:
        click.echo(f"MoySklad connection check{of} failed: fix the problems above and run it again.", err=True)
        sys.exit(1)
    click.echo(f"MoySklad connection{of} OK" + (" (the DEMO emulator, not your account)." if settings.is_demo else "."))


@moysklad_cli.command("sync")
@click.option("--full", is_flag=True, help="Read everything and mark what MoySklad no longer has as removed.")
@ACCOUNT_OPTION
def sync_command(full: bool, account: str):
    """Pull the catalog from MoySklad into the catalog store (incremental unless --full or due)."""
    from moysklad.connect import open_client
    from moysklad.sync import sync_catalog
    from store import StoreError, open_catalog

    settings = _account(account)
    account = settings.account
    _require_credentials(settings, "sync")
    ms = settings.moysklad
    try:
        with working_for(account), open_client(ms) as client, open_catalog(settings.store_path) as store:
            result = sync_catalog(
                client, store, full=full, overlap_minutes=ms.overlap_minutes, full_sync_hours=ms.full_sync_hours,
                stock_report_hours=ms.stock_report_hours, progress=lambda stage, count, total=None: click.echo(f"  {stage}: {count}" + (f"/{total}" if total else ""),
                                                                     err=True),
            )
    except (MoySkladError, StoreError) as exc:
        click.echo(f"Sync failed, the catalog store is unchanged: {exc}", err=True)
        sys.exit(1)
    counts = result.counts
    click.echo(
        f"{result.mode} sync #{result.number} done in {result.seconds:.1f}s: "
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
