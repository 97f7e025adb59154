"""A feed build: sync the source (MoySklad), cache pictures, render the ICML file, publish it."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from core.settings import FeedSettings, Settings
from feeds.icml import RenderError, RenderStats, render_icml, resolve_options
from feeds.publish import GuardRefused, PublishRefused, publish, remove_leftovers
from moysklad.connect import open_client
from moysklad.sync import SyncResult, sync_catalog
from store import CatalogReader, open_catalog

log = logging.getLogger(__name__)


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


class BuildFailed(Exception):
    """The build did not publish; the previous feed file stays served. The message says why."""


def feed_source(feed: FeedSettings) -> str:
    """The runs-table source of a feed's builds."""
    return f"feed:{feed.name}"


def sync_source(settings: Settings, progress=None) -> SyncResult:
    """Bring the store up to date with MoySklad, then refresh the pictures the feeds link to."""
    ms = settings.moysklad
    with open_client(ms) as client, open_catalog(settings.store_path) as store:
        result = sync_catalog(client, store, overlap_minutes=ms.overlap_minutes, full_sync_hours=ms.full_sync_hours,
                              progress=progress)
        modes = {feed.pictures for feed in settings.moysklad_feeds}
        if modes & {"cache", "permanent"}:
            _refresh_pictures(client, store, settings, modes, result)
        return result


def _refresh_pictures(client, store, settings: Settings, modes: set[str], result: SyncResult) -> None:
    from moysklad import images

    if "cache" in modes:
        images.cache_images(client, store, settings.images_dir)
    if "permanent" in modes:
        images.fetch_permanent_links(client, store, changed_since=result.changed_since)


def build_feed(settings: Settings, feed: FeedSettings, *, force: bool = False, sync: bool = True,
               progress=None) -> BuildResult:
    """Sync (for source moysklad, unless ``sync`` is false), render and publish one feed."""
    started = time.monotonic()
    sync_result = sync_source(settings, progress) if sync and feed.source == "moysklad" else None
    feeds_dir = settings.feeds_dir
    with open_catalog(settings.store_path) as store:
        last = store.last_run(feed_source(feed), "build", "ok")
        previous_active = last["counts"].get("active") if last else None
        try:
            with store.run(feed_source(feed), "build", "forced" if force else None) as run:
                remove_leftovers(feeds_dir, feed.name)
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
                                        guard="forced" if force else "passed",
                                        build_seconds=round(time.monotonic() - started, 3))
        except (RenderError, PublishRefused) as exc:
            raise BuildFailed(str(exc)) from exc
        except OSError as exc:  # a full disk, say: an operator's problem, not a crash (publish removed its temp files)
            raise BuildFailed(f"cannot write the feed file in {feeds_dir}: {exc}") from exc
    seconds = time.monotonic() - started
    log.info("feed %s built in %.1fs: %d offers (%d inactive), %d skipped, %d bytes", feed.name, seconds,
             stats.offers, stats.inactive, sum(stats.skipped.values()), published.size)
    return BuildResult(run_id=run.id, feed=feed.name, published=True, offers=stats.offers,
                       skipped=dict(stats.skipped), size=published.size, seconds=seconds,
                       render_seconds=run.stats.counts["render_seconds"],
                       guard=run.stats.counts["guard"], sync=sync_result)


def _record(run, stats: RenderStats) -> None:
    """Counts and skipped offers go into the build's run, whether it published or not."""
    run.stats.counts.update(offers=stats.offers, active=stats.offers - stats.inactive, inactive=stats.inactive,
                            categories=stats.categories,
                            skipped_by_reason=dict(stats.skipped), skipped_examples=stats.examples)
    for reason, examples in stats.examples.items():
        for example in examples:
            run.skip("offer", example["id"], example["name"], reason)
    run.stats.counts["skipped"] = sum(stats.skipped.values())  # all of them, not just the examples kept
