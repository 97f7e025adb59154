"""``flask --app app retailcrm check|push [FEED]``: the retailCRM side from the command line."""

from __future__ import annotations

import sys
import time

import click
from flask import current_app
from flask.cli import AppGroup

from core.account_context import working_for
from retailcrm.errors import RetailCrmError

# Feature modules are imported by the commands that use them: `flask --app app` starts without loading them.

retailcrm_cli = AppGroup("retailcrm", help="Check the retailCRM connection and push stock and prices.")


def _pushing_feeds(name: str | None):
    """(account settings, feed) of FEED, or of every feed with a retailcrm section; exits 2 naming them."""
    settings = current_app.config["SETTINGS"]
    pushing = [(account, feed) for account, feed in settings.every_feed() if feed.retailcrm is not None]
    chosen = [(account, feed) for account, feed in pushing if name in (None, feed.name)]
    if not chosen:
        known = ", ".join(feed.name for _, feed in pushing) or "none has a retailcrm section"
        click.echo(f"No feed {'named ' + repr(name) + ' ' if name else ''}pushes to retailCRM (feeds that do: {known})",
                   err=True)
        sys.exit(2)
    return chosen


@retailcrm_cli.command("check")
@click.argument("feed_name", metavar="[FEED]", required=False)
def check_command(feed_name: str | None):
    """Verify the key, the shop and every mapped warehouse and price type, in retailCRM and in the catalog."""
    from retailcrm.check import check_feed
    from retailcrm.client import RetailCrmClient

    failed = False
    for account, feed in _pushing_feeds(feed_name):
        click.echo(f"feed {feed.name}:")
        crm = feed.retailcrm
        with working_for(account.account), RetailCrmClient(crm.url, crm.api_key, max_retries=2) as client:
            report = check_feed(account, feed, client)
        width = max(len(label) for label, _ in report.facts) + 2
        for label, value in report.facts:
            click.echo(f"  {label + ' ':.<{width}} {value}")
        for problem in report.problems:
            click.echo(f"  PROBLEM: {problem}", err=True)
        failed |= not report.ok
    if failed:
        click.echo("retailCRM check failed: fix the problems above and run it again.", err=True)
        sys.exit(1)
    click.echo("retailCRM connection OK.")


@retailcrm_cli.command("push")
@click.argument("feed_name", metavar="[FEED]", required=False)
@click.option("--full", is_flag=True, help="Send every value, not only what changed since the last push.")
def push_command(feed_name: str | None, full: bool):
    """Push FEED's stock and prices (every pushing feed's) to retailCRM: what changed, or everything with --full."""
    from retailcrm.check import unreachable
    from retailcrm.push import MappingError, push_feed
    from store import StoreError

    failed = False
    for account, feed in _pushing_feeds(feed_name):
        click.echo(f"feed {feed.name} → {feed.retailcrm.url} (shop {feed.retailcrm.site}):", err=True)
        shown = {}

        def progress(kind: str, sent: int, total: int) -> None:
            now = time.monotonic()
            if sent == total or now - shown.get(kind, 0) >= 2:
                shown[kind] = now
                click.echo(f"  {'stock' if kind == 'store' else 'prices'}: {sent} of {total} offers", err=True)

        try:
            with working_for(account.account):
                result = push_feed(account, feed, full=full, progress=progress)
        except (RetailCrmError, MappingError, StoreError) as exc:
            click.echo(f"  FAILED (what was accepted before stays recorded; the next push sends the rest): "
                       f"{unreachable(account, feed, exc) or exc}", err=True)
            failed = True
            continue
        click.echo(f"  {result.mode} push #{result.number} done in {result.seconds:.1f}s: {result.offers} offers pushed "
                   f"({result.records} values) in {result.batches} batches; {result.not_found} not found in retailCRM "
                   f"({result.waiting} waiting for it to load the feed); {result.requests} requests, "
                   f"{result.throttled} throttled (503), {result.retries} retried")
    sys.exit(1 if failed else 0)
