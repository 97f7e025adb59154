"""A feed build: check the feed's names, sync the source (MoySklad), render the ICML file, publish it, and
fetch new pictures.

Many new pictures are fetched after the publication: the feed goes out at once with the pictures
already cached, the new ones are downloaded, and the feed is published once more with them. So
retailCRM can load the goods seconds after the sync rather than after minutes of downloads (a first
build of 20,000 goods waits for some 13,000 pictures); a few new pictures are fetched first and the
feed is published once.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from core.child_process import start_soon
from core.settings import FeedSettings, Settings
from feeds.icml import RenderError, RenderStats, catalog_loaded, not_loaded, render_icml, resolve_options
from feeds.progress import BuildProgress
from feeds.publish import GuardRefused, PublishRefused, publish, remove_leftovers, withdraw
from moysklad import images
from moysklad.check import feed_name_problems
from moysklad.client import MoySkladClient
from moysklad.connect import open_client
from moysklad.errors import ONE_ACCOUNT_PER_STORE, AccountMismatch, MoySkladError
from moysklad.sync import SyncResult, sync_catalog
from store import CatalogReader, StoreError, open_catalog

log = logging.getLogger(__name__)

# Up to this many new pictures are fetched before the only publication; more are fetched after a first one.
PICTURES_BEFORE_PUBLISH = 50
PICTURES_MODE = "pictures"  # the run mode of the publication that adds the pictures fetched after the first


@dataclass
class BuildResult:
    """What one build did, as recorded in the runs table (source ``feed:<name>``, kind ``build``)."""

    run_id: int
    feed: str
    published: bool
    offers: int
    skipped: dict = field(default_factory=dict)  # reason -> count
    size: int = 0
    seconds: float = 0.0
    render_seconds: float = 0.0
    guard: str = ""
    sync: SyncResult | None = None
    number: int = 0  # the feed's own build counter (build №3), unlike run_id which every source shares
    pictures_waiting: int = 0  # new pictures this publication went out without
    with_pictures: BuildResult | None = None  # the publication that added them, once they were fetched


class BuildFailed(Exception):
    """The build did not publish; the previous feed file (if any) stays served. The message says why."""


def feed_source(feed: FeedSettings) -> str:
    """The runs-table source of a feed's builds."""
    return f"feed:{feed.name}"


def sync_source(settings: Settings, progress=None) -> SyncResult:
    """Bring the store up to date with MoySklad, then refresh the pictures the feeds link to."""
    with open_client(settings.moysklad) as client:
        result = _sync(client, settings, progress)
        _refresh_pictures(client, settings, result, progress)
        return result


def build_feed(settings: Settings, feed: FeedSettings, *, force: bool = False, sync: bool = True,
               echo: Callable[[str], None] | None = None, full_sync: bool = False,
               on_published: Callable[[BuildResult], None] | None = None) -> BuildResult:
    """Check the feed's names, sync (source moysklad, unless ``sync`` is false; whole when ``full_sync``), render
    and publish one feed.

    ``echo`` receives progress lines for a person (the command line); any process sees the progress
    through :func:`feeds.progress.read_progress`. ``on_published`` hears the first publication as soon as it is
    out, before the minutes of picture downloads that may follow it (the retailCRM push goes then).
    """
    published = on_published or (lambda result: None)
    started = time.monotonic()
    start_soon()  # the render's processes come from the fork server: have it ready by then
    with BuildProgress(settings.data_dir, feed.name, echo) as progress:
        if not (sync and feed.source == "moysklad"):
            result = _publish(settings, feed, force, started, progress)
            published(result)
            return result
        with open_client(settings.moysklad) as client:
            _check_names(settings, feed)
            try:
                sync_result = _sync(client, settings, progress, full=full_sync)
            except Exception as exc:
                if isinstance(exc, AccountMismatch):
                    _withdraw_other_account(settings)
                _record_failed_at_sync(settings, feed, exc)
                raise
            waiting = _pictures_waiting(settings, sync_result)
            if waiting <= PICTURES_BEFORE_PUBLISH:
                _refresh_pictures(client, settings, sync_result, progress)
                result = _publish(settings, feed, force, started, progress)
                published(result)
            else:
                result = _publish(settings, feed, force, started, progress, pictures_waiting=waiting)
                published(result)
                progress.note(f"  published build #{result.number} with {result.offers} offers; {waiting} new pictures "
                              "are fetched now and the feed is published again with them")
                if not _refresh_pictures(client, settings, sync_result, progress):
                    progress.note("  the new pictures were not fetched (see the log); the next build tries again")
                elif feed.pictures != "none":
                    result.with_pictures = _publish(settings, feed, False, time.monotonic(), progress, mode=PICTURES_MODE)
        result.sync = sync_result
        return result


# The guard count of a build refused because its catalog was never loaded: the page says it waits for the catalog.
CATALOG_NOT_LOADED = "catalog not loaded"
# The mode of a build recorded as failed because the sync before it failed (the sync's run says why in detail).
FAILED_AT_SYNC = "sync"


def _record_failed_at_sync(settings: Settings, feed: FeedSettings, error: Exception) -> None:
    """A build whose sync failed is still an attempt of this feed that did not publish: recorded as its failed build
    (build №, metrics' build failures), with the sync's error."""
    try:
        with open_catalog(settings.store_path) as store, store.run(feed_source(feed), "build", FAILED_AT_SYNC):
            raise error
    except type(error):
        pass
    except StoreError as exc:  # the sync's own error is what the caller reports
        log.warning("feed %s: the failed build was not recorded: %s", feed.name, exc)


def _withdraw_other_account(settings: Settings) -> None:
    """The store holds another MoySklad account than the config's (an account name reused for a new client, say):
    its feed files, built from that account, must not be served at this config's URLs to this config's retailCRM."""
    for feed in settings.moysklad_feeds:
        if withdraw(settings.feeds_dir, feed.name):
            log.warning("feed %s: withdrawn (moved aside as %s/%s.xml.withdrawn): it was built from another "
                        "MoySklad account than the configured one", feed.name, settings.feeds_dir, feed.name)


def _other_account_synced_last(store, feed: FeedSettings) -> str | None:
    """The error of the last sync when it found the store holding another MoySklad account: nothing may be published
    from that store for this config (a rebuild's later feeds do not sync themselves)."""
    if feed.source != "moysklad":
        return None
    last = store.last_run("moysklad", "sync")
    error = (last or {}).get("error") or ""
    return error if ONE_ACCOUNT_PER_STORE in error else None


def _check_names(settings: Settings, feed: FeedSettings) -> None:
    """Before the sync (minutes on a first build), make sure the feed's price type, warehouses and
    attributes exist: one try of one small request per kind of name. A missing name fails the build
    at once; when MoySklad does not answer, the sync that follows finds out (with its retries)."""
    quick = dataclasses.replace(settings.moysklad, max_retries=0)
    try:
        with open_client(quick) as client:
            problems = feed_name_problems(client, [feed])
    except MoySkladError as exc:
        log.info("feed %s: names not checked before the sync: %s", feed.name, exc)
        return
    if problems:
        # recorded as this feed's failed build, for the page
        with open_catalog(settings.store_path) as store, store.run(feed_source(feed), "build"):
            raise BuildFailed("; ".join(problems))


def _sync(client: MoySkladClient, settings: Settings, progress, full: bool = False) -> SyncResult:
    ms = settings.moysklad
    with open_catalog(settings.store_path) as store:
        return sync_catalog(client, store, full=full, overlap_minutes=ms.overlap_minutes,
                            full_sync_hours=ms.full_sync_hours, stock_report_hours=ms.stock_report_hours,
                            progress=progress)


def _picture_modes(settings: Settings) -> set[str]:
    """Pictures are shared by the account's feeds: each mode any of them uses is kept up to date."""
    return {feed.pictures for feed in settings.moysklad_feeds} & {"cache", "permanent"}


def _pictures_waiting(settings: Settings, result: SyncResult) -> int:
    """How many pictures (downloads or links) the account's feeds lack after a sync."""
    modes = _picture_modes(settings)
    with open_catalog(settings.store_path) as store:
        waiting = images.pending_downloads(store, settings.images_dir) if "cache" in modes else 0
        if "permanent" in modes:
            waiting += images.pending_permanent_links(store, result.changed_since)
    return waiting


def _refresh_pictures(client: MoySkladClient, settings: Settings, result: SyncResult, progress) -> bool:
    """Download new pictures and ask new CDN links; False when that failed (the feed goes without them)."""
    modes = _picture_modes(settings)
    try:
        with open_catalog(settings.store_path) as store:
            if "cache" in modes:
                images.cache_images(client, store, settings.images_dir, progress=progress)
            if "permanent" in modes:
                images.fetch_permanent_links(client, store, changed_since=result.changed_since, progress=progress)
    except (MoySkladError, StoreError) as exc:
        log.warning("pictures not refreshed, the next build tries again: %s", exc)
        return False
    return True


def _publish(settings: Settings, feed: FeedSettings, force: bool, started: float, progress,
             pictures_waiting: int = 0, mode: str | None = None) -> BuildResult:
    """Render the feed from the store and publish it, as one build run."""
    feeds_dir = settings.feeds_dir
    with open_catalog(settings.store_path) as store:
        other_account = _other_account_synced_last(store, feed)
        if other_account:
            with store.run(feed_source(feed), "build"):  # recorded as this feed's failed build, for the page
                raise BuildFailed(other_account)
        last = store.last_run(feed_source(feed), "build", "ok")
        previous_active = last["counts"].get("active") if last else None
        try:
            with store.run(feed_source(feed), "build", "forced" if force else mode) as run:
                remove_leftovers(feeds_dir, feed.name)
                with CatalogReader(settings.store_path) as reader:
                    if not catalog_loaded(reader, feed.source):  # --force too: an empty feed empties retailCRM
                        run.stats.counts["guard"] = CATALOG_NOT_LOADED
                        raise PublishRefused(f"{not_loaded(feed.source)}: not published, so retailCRM is not handed "
                                             "a catalog without goods")
                rendered: list[RenderStats] = []  # filled by write(), which publish() calls

                def write(out) -> tuple[int, int]:
                    render_started = time.monotonic()
                    with CatalogReader(settings.store_path) as reader:
                        options = resolve_options(reader, feed, settings.images_url)
                        result = render_icml(reader, options, out, scratch_dir=feeds_dir,
                                             progress=(lambda n: progress("render", n)) if progress else None)
                    rendered.append(result)
                    run.stats.counts["render_seconds"] = round(time.monotonic() - render_started, 3)
                    return result.offers, result.offers - result.inactive

                try:
                    published = publish(feeds_dir, feed.name, write, previous_active=previous_active,
                                        min_ratio=feed.min_ratio, force=force)
                except GuardRefused:
                    run.stats.counts["guard"] = "refused"
                    raise
                finally:
                    stats = rendered[0] if rendered else RenderStats()
                    _record(run, stats)
                run.stats.counts.update(size=published.size, published=True,
                                        guard="forced" if force else "passed", pictures_waiting=pictures_waiting,
                                        build_seconds=round(time.monotonic() - started, 3))
        except (RenderError, PublishRefused) as exc:
            raise BuildFailed(str(exc)) from exc
        except OSError as exc:  # a full disk, say: an operator's problem, not a crash (publish removed its temp files)
            raise BuildFailed(f"cannot write the feed file in {feeds_dir}: {exc}") from exc
    seconds = time.monotonic() - started
    log.info("feed %s built in %.1fs: %d offers (%d inactive), %d skipped, %d bytes%s", feed.name, seconds,
             stats.offers, stats.inactive, sum(stats.skipped.values()), published.size,
             f"; {pictures_waiting} new pictures follow" if pictures_waiting else
             " with the pictures fetched after the first publication" if mode == PICTURES_MODE else "")
    return BuildResult(run_id=run.id, feed=feed.name, published=True, offers=stats.offers,
                       skipped=dict(stats.skipped), size=published.size, seconds=seconds,
                       render_seconds=run.stats.counts["render_seconds"],
                       guard=run.stats.counts["guard"], number=run.number, pictures_waiting=pictures_waiting)


def _record(run, stats: RenderStats) -> None:
    """Counts and skipped offers go into the build's run, whether it published or not."""
    run.stats.counts.update(offers=stats.offers, active=stats.offers - stats.inactive, inactive=stats.inactive,
                            categories=stats.categories, reused=stats.reused,
                            skipped_by_reason=dict(stats.skipped), skipped_examples=stats.examples)
    for reason, examples in stats.examples.items():
        for example in examples:
            run.skip("offer", example["id"], example["name"], reason)
    run.stats.counts["skipped"] = sum(stats.skipped.values())  # all of them, not just the examples kept
