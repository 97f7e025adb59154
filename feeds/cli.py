"""``flask --app app feeds build [NAME] [--force]``: sync, render and publish from the command line."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click
from flask import current_app
from flask.cli import AppGroup

from core.account_context import working_for
from moysklad.errors import MoySkladError

if TYPE_CHECKING:
    from feeds.build import BuildResult

# Feature modules are imported by the commands that use them: `flask --app app` starts without loading them.

feeds_cli = AppGroup("feeds", help="Build and publish the ICML feeds.")


@feeds_cli.command("build")
@click.argument("name", required=False)
@click.option("--force", is_flag=True, help="Publish even if the feed lost more offers than min_ratio allows.")
@click.option("--no-sync", is_flag=True, help="Render from the store as it is, without syncing MoySklad first.")
def build_command(name: str | None, force: bool, no_sync: bool):
    """Sync (source moysklad), render and publish NAME, or every feed."""
    from feeds.build import BuildFailed, build_feed
    from feeds.publish import failure_outcome
    from store import StoreError

    settings = current_app.config["SETTINGS"]
    everything = list(settings.every_feed())
    feeds = [(account, feed) for account, feed in everything if name in (None, feed.name)]
    if not everything:
        config = settings.source_path or "config.yaml"
        click.echo(f"No feed is configured: add one to {config}, e.g. `feeds: [{{name: main}}]` (source: moysklad, the "
                   "default, or exchange for what 1C uploads)", err=True)
        sys.exit(2)
    if not feeds:
        click.echo(f"No feed named {name!r} (feeds: {', '.join(feed.name for _, feed in everything)})", err=True)
        sys.exit(2)
    failed = False
    for account, feed in feeds:
        click.echo(f"feed {feed.name} ({feed.source}{', account ' + account.account if account.account else ''}):", err=True)
        try:
            with working_for(account.account):
                result = build_feed(account, feed, force=force, sync=not no_sync,
                                    echo=lambda line: click.echo(line, err=True))
        except (BuildFailed, MoySkladError, StoreError) as exc:
            click.echo(f"  FAILED, {failure_outcome(account.feeds_dir, feed.name)}: {exc}", err=True)
            failed = True
            continue
        click.echo(_summary(result))
        if result.with_pictures:
            click.echo(f"  published again with the new pictures: build #{result.with_pictures.number}, "
                       f"{result.with_pictures.size / 1e6:.1f} MB")
        click.echo(f"  {settings.public_url}/feeds/{feed.token + '/' if feed.token else ''}{feed.name}.xml")
    sys.exit(1 if failed else 0)


def _summary(result: BuildResult) -> str:
    skipped = ", ".join(f"{count} {reason}" for reason, count in result.skipped.items()) or "none"
    return (f"  published {result.offers} offers, {result.size / 1e6:.1f} MB in {result.seconds:.1f}s (build "
            f"#{result.number}); skipped: {skipped}; guard: {result.guard}")
