"""A rebuild takes unchanged offers from the last render's markup files, and its feed is still, offer
for offer, the one a render from scratch makes."""

import dataclasses
import subprocess
import sys

from lxml import etree

from feeds.build import feed_source
from feeds.icml import render_icml, resolve_options
from store import CatalogReader, open_catalog
from tests.feeds.test_feeds import build, feed_settings, parse


def offers(document) -> dict[str, bytes]:
    return {offer.get("id"): etree.tostring(offer) for offer in document.iter("offer")}


def from_scratch(settings, tmp_path) -> dict[str, bytes]:
    """The offers of a render of the same store without markup files (no scratch folder: nothing to reuse)."""
    path = tmp_path / "scratch.xml"
    with CatalogReader(settings.store_path) as reader, open(path, "wb") as out:
        render_icml(reader, resolve_options(reader, settings.feeds[0], settings.images_url), out)
    return offers(etree.parse(str(path)))


def reused(settings) -> int:
    with open_catalog(settings.store_path) as store:
        return store.last_run(feed_source(settings.feeds[0]), "build", "ok")["counts"]["reused"]


def test_a_rebuild_renders_only_the_offers_that_changed(tmp_path, emulator):
    settings = feed_settings(tmp_path, emulator)
    first = build(settings)
    assert reused(settings) == 0
    published = offers(parse(settings))

    build(settings, sync=False)
    assert reused(settings) == first.offers
    assert offers(parse(settings)) == published

    catalog = emulator.catalog
    single = next(i for i in catalog.items.values()
                  if i.kind == "product" and not i.variant_ids and not i.archived and i.name and i.id in published)
    stocked = next(i for i in catalog.items.values()
                   if i.kind == "variant" and not i.archived and i.id in published and i.parent_id != single.id)
    catalog.update_item(single.id, name="Новое имя", sale_price=123456)
    catalog.set_stock(stocked.id, catalog.stores[0].id, stock=stocked.stock[0] + 7)
    again = build(settings)

    assert reused(settings) == again.offers - 2
    now = offers(parse(settings))
    assert now == from_scratch(settings, tmp_path)
    changed = etree.fromstring(now[single.id])
    assert (changed.findtext("name"), changed.findtext("price")) == ("Новое имя", "1234.56")
    assert now[stocked.id] != published[stocked.id]
    assert {i: markup for i, markup in now.items() if i not in (single.id, stocked.id)} == \
        {i: markup for i, markup in published.items() if i not in (single.id, stocked.id)}


def test_other_feed_options_render_every_offer_anew(tmp_path, emulator):
    settings = feed_settings(tmp_path, emulator)
    build(settings)
    settings = dataclasses.replace(settings, feeds=(dataclasses.replace(
        settings.feeds[0], purchase_price="buyPrice", xml_id="{code}", url="https://shop.example/p/{code}"),))
    build(settings, sync=False)
    assert reused(settings) == 0
    assert offers(parse(settings)) == from_scratch(settings, tmp_path)
    assert all(b"<url>https://shop.example/p/" in markup for markup in offers(parse(settings)).values())


def test_a_damaged_or_cut_markup_file_costs_time_not_correctness(tmp_path, emulator):
    settings = feed_settings(tmp_path, emulator)
    first = build(settings)
    published = offers(parse(settings))
    [markup_file] = (settings.data_dir / "feeds").glob(".main.markup.*")
    data = markup_file.read_bytes()
    damaged = data.replace(b"<price>", b"<prize>", 1)  # a damaged offer: well-formed, wrong
    assert damaged != data
    markup_file.write_bytes(damaged[: len(damaged) * 2 // 3])  # and the last third of the file gone

    build(settings, sync=False)
    assert 0 < reused(settings) < first.offers
    assert offers(parse(settings)) == published == from_scratch(settings, tmp_path)


def test_a_render_leaves_the_write_lock_of_its_process_in_place(tmp_path, emulator):
    """The render reads the store through apsw, in processes of its own. Had this process opened and closed the store
    through apsw while it wrote through sqlite3, the close would have released its write lock, and another process
    could have written in the middle of the run (two copies of SQLite in one process do not know each other's locks)."""
    settings = feed_settings(tmp_path, emulator)
    build(settings)
    probe = ("import sqlite3, sys\nconnection = sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None)\n"
             "try:\n    connection.execute('BEGIN IMMEDIATE')\nexcept sqlite3.OperationalError as exc:\n    print(exc)\n"
             "else:\n    print('took the write lock')")

    def another_process_writes() -> str:
        return subprocess.run([sys.executable, "-c", probe, str(settings.store_path)], capture_output=True, text=True,
                              check=True).stdout.strip()

    with open_catalog(settings.store_path) as store, store.run("exchange", "import") as run:
        run.upsert_offers([{"id": "x", "product_id": "x", "kind": "product", "name": "Новинка"}])
        assert another_process_writes() == "database is locked"
        assert from_scratch(settings, tmp_path)  # the render, while this process holds the write lock
        assert another_process_writes() == "database is locked"
