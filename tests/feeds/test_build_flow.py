"""How a build runs for the person waiting on it: goods published before a long picture download, the
pictures in a second publication, progress on the command line, and honest words when it fails."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from lxml import etree

from core.settings import FeedSettings, Settings
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
