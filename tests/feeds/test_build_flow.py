"""How a build runs for the person waiting on it: goods published before a long picture download, the
pictures in a second publication, progress on the command line, and honest words when it fails."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import requests
from lxml import etree

from core.settings import FeedSettings, Settings, load_settings
from emulator.harness import EMULATOR_TOKEN, ROOT, client_settings
from feeds.build import PICTURES_BEFORE_PUBLISH, build_feed
from feeds.progress import BuildProgress, read_progress
from store import CatalogStore, StoreBusy


def picture_settings(tmp_path, emulator) -> Settings:
    return Settings(data_dir=tmp_path / "data", moysklad=client_settings(emulator),
                    feeds=(FeedSettings(name="main", pictures="cache"),), public_url="https://feeds.example")


def pictured_offers(path) -> set[str]:
    return {offer.get("id") for offer in etree.parse(str(path)).iterfind(".//offer") if offer.find("picture") is not None}


def builds(settings: Settings) -> list[dict]:
    store = CatalogStore(settings.store_path)
    try:
        return list(reversed(store.runs_of("feed:main", "build", 10)))
    finally:
        store.close()


def test_goods_are_published_before_many_new_pictures_and_again_with_them(tmp_path, emulator_factory):
    emulator = emulator_factory(products=250)
    settings = picture_settings(tmp_path, emulator)
    result = build_feed(settings, settings.feeds[0])

    assert result.pictures_waiting > PICTURES_BEFORE_PUBLISH  # a first build: every picture is new
    first, second = builds(settings)
    assert (first["status"], first["mode"], first["counts"]["pictures_waiting"]) == ("ok", None, result.pictures_waiting)
    assert (second["status"], second["mode"]) == ("ok", "pictures")
    assert (result.number, result.with_pictures.number) == (1, 2)
    feeds = settings.data_dir / "feeds"
    assert pictured_offers(feeds / "main.previous.xml") == set()  # the first publication did not wait for them
    with_pictures = pictured_offers(feeds / "main.xml")
    assert len(with_pictures) >= result.pictures_waiting - 5  # a few files retailCRM would refuse are left out
    assert first["counts"]["offers"] == second["counts"]["offers"] == result.offers

    changed = sorted(with_pictures)[0]
    emulator.catalog.update_item(changed, name="Новое фото")  # its picture's `updated` moves: one download
    emulator.reset_stats()
    again = build_feed(settings, settings.feeds[0])
    assert len([entry for entry in emulator.request_log if entry["path"].startswith("/download/")]) == 1
    assert again.with_pictures is None and again.pictures_waiting == 0  # few new pictures: fetched first, one publication
    assert [run["mode"] for run in builds(settings)] == [None, "pictures", None]


def test_the_command_line_shows_progress_and_the_two_publications(tmp_path, emulator_factory):
    emulator = emulator_factory(products=250)
    config = tmp_path / "config.yaml"
    config.write_text(f"data_dir: data\nmoysklad:\n  base_url: {emulator.base_url}\n  token: {EMULATOR_TOKEN}\n"
                      "feeds:\n  - name: main\n    pictures: cache\n", encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "flask", "--app", "app", "feeds", "build"], cwd=ROOT,
                            env=dict(os.environ, SKLADBRIDGE_CONFIG=str(config)), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    err = result.stderr
    first = re.search(r"^  published build #1 with \d+ offers; (\d+) new pictures are fetched now", err, re.MULTILINE)
    total = int(first[1])
    assert re.search(r"^  assortment: \d+/\d+ \(\d+%\)", err, re.MULTILINE)
    assert f"  pictures: 0/{total} (0%)" in err
    assert re.search(rf"^  pictures: {total}/{total} \(100%\), [\d.]+/s$", err, re.MULTILINE)
    assert err.index("published build #1") < err.index(f"pictures: {total}/{total}")
    assert re.search(r"^  published \d+ offers, [\d.]+ MB in [\d.]+s \(build #1\)", result.stdout, re.MULTILINE)
    assert "  published again with the new pictures: build #2" in result.stdout


def test_a_failed_first_build_does_not_claim_a_previous_file(tmp_path, emulator):
    config = tmp_path / "config.yaml"
    config.write_text(f"data_dir: data\nmoysklad:\n  base_url: {emulator.base_url}\n  token: {EMULATOR_TOKEN}\n"
                      "feeds:\n  - name: main\n    pictures: none\n    price_type: Розничная цена\n", encoding="utf-8")
    env = dict(os.environ, SKLADBRIDGE_CONFIG=str(config))
    command = [sys.executable, "-m", "flask", "--app", "app", "feeds", "build"]
    first = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 1
    assert "  FAILED, nothing is published yet: feed main: price_type «Розничная цена» is not a price type" in first.stderr
    assert "previous" not in first.stderr

    config.write_text(config.read_text(encoding="utf-8").replace("Розничная цена", "Оптовая цена"), encoding="utf-8")
    assert subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120).returncode == 0
    emulator.set_credentials(token="another-token")  # revoked: the sync fails, the published file stays
    later = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert later.returncode == 1
    assert "  FAILED, the previous file stays published: MoySklad rejected the credentials" in later.stderr


def test_one_build_of_a_feed_at_a_time_and_its_progress_is_seen_from_outside(tmp_path):
    data_dir = tmp_path / "data"
    assert read_progress(data_dir, "main") is None
    lines = []
    with BuildProgress(data_dir, "main", echo=lines.append) as progress:
        progress("pictures", 0, 400)
        progress("pictures", 100, 400)
        progress("pictures", 400, 400)
        seen = read_progress(data_dir, "main")
        assert (seen["stage"], seen["done"], seen["total"], seen["pid"]) == ("pictures", 400, 400, os.getpid())
        with pytest.raises(StoreBusy, match=f"feed main is already being built by process {os.getpid()}"):
            BuildProgress(data_dir, "main").__enter__()
    assert read_progress(data_dir, "main") is None  # the lock went with the build
    # the first and last figures of a step, and none in between within ECHO_EVERY seconds
    assert lines == ["  pictures: 0/400 (0%)", "  pictures: 400/400 (100%)"]


def test_a_catalog_never_loaded_is_not_published_as_an_empty_feed(tmp_path, emulator, serve):
    """`feeds build --no-sync` before any sync (or an exchange feed before 1C's first upload) published a feed of 0
    offers with exit status 0: retailCRM, loading it, takes every good off sale. Refused, saying what loads the catalog;
    the page shows the feed as not built yet, with why."""
    config = tmp_path / "config.yaml"
    config.write_text(f"data_dir: data\nmoysklad: {{base_url: '{emulator.base_url}'}}\n"
                      "feeds:\n  - {name: main, pictures: none}\n  - {name: shop, source: exchange, pictures: none}\n",
                      encoding="utf-8")
    env = {**os.environ, "SKLADBRIDGE_CONFIG": str(config), "MOYSKLAD_TOKEN": EMULATOR_TOKEN}
    built = subprocess.run([sys.executable, "-m", "flask", "--app", "app", "feeds", "build", "--no-sync"], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=120)
    assert built.returncode == 1
    assert ("  FAILED, nothing is published yet: the moysklad catalog is not loaded yet (run `flask --app app moysklad "
            "sync`): not published, so retailCRM is not handed a catalog without goods") in built.stderr.splitlines()
    assert ("  FAILED, nothing is published yet: the exchange catalog is not loaded yet (1C or MoySklad uploads it "
            "through the exchange, <public_url>/exchange/1c): not published") in built.stderr
    assert not list((tmp_path / "data" / "feeds").glob("*.xml"))

    feeds = requests.get(serve(load_settings(config, environ=env)) + "/health.json", timeout=30).json()["feeds"]
    for feed in feeds:
        assert feed["state"] == "pending" and feed["error"]["title"] == "Каталог ещё не загружен: фид не опубликован"
