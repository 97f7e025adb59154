"""The health page as a newcomer meets it: on a phone (390 px) and a laptop (1366 px), during the first
build and after it, with words that agree with their numbers."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import requests

from core.russian import counted, grouped, plural
from core.settings import FeedSettings, Settings
from emulator.harness import client_settings, wait_for
from feeds.build import PICTURES_BEFORE_PUBLISH, build_feed
from health.collect import every_text
from tests.health.test_health import browser, build_three_feeds, three_feeds, three_feeds_settings  # noqa: F401

SCREENSHOTS = os.environ.get("SKLADBRIDGE_SCREENSHOTS")  # a folder to keep the pictures in, for a person to look at
PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 3, "mobile": True}
LAPTOP = {"width": 1366, "height": 768, "deviceScaleFactor": 1, "mobile": False}


@pytest.mark.parametrize("count, expected", [
    (1, "1 синхронизация"), (2, "2 синхронизации"), (4, "4 синхронизации"), (5, "5 синхронизаций"),
    (11, "11 синхронизаций"), (12, "12 синхронизаций"), (21, "21 синхронизация"), (22, "22 синхронизации"),
    (111, "111 синхронизаций"), (0, "0 синхронизаций"), (13414, "13\u202f414 синхронизаций"),
])
def test_nouns_agree_with_their_numbers(count, expected):
    assert counted(count, "синхронизация", "синхронизации", "синхронизаций") == expected
    assert plural(count, "a", "b", "c") == {"синхронизация": "a", "синхронизации": "b"}.get(expected.split()[-1], "c")


@pytest.mark.parametrize("seconds, expected", [
    (3600, "каждый час"), (7200, "каждые 2 часа"), (5 * 3600, "каждые 5 часов"), (1800, "каждые 30 минут"),
    (60, "каждую минуту"), (120, "каждые 2 минуты"), (21 * 60, "каждую 21 минуту"), (5400, "каждые 90 минут"),
    (86400, "каждый день"), (3, "каждые 3 секунды"),
])
def test_schedules_read_as_russian_says_them(seconds, expected):
    assert every_text(seconds) == expected


def view(driver, base: str, metrics: dict) -> None:
    """Open the page as that screen shows it (Chrome's device emulation: width, pixel ratio, mobile)."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    driver.get(base + "/")
    assert driver.execute_script("return window.innerWidth") == metrics["width"]


def fits(driver) -> None:
    """Nothing runs off the screen: no sideways scrolling, every feed URL whole, charts inside with legible labels."""
    width = driver.execute_script("return window.innerWidth")
    assert driver.execute_script("return document.documentElement.scrollWidth") <= width
    for url in driver.find_elements("css selector", ".url code"):
        box = driver.execute_script("var r = arguments[0].getBoundingClientRect(); "
                                    "return [r.left, r.right, arguments[0].scrollWidth, arguments[0].clientWidth]", url)
        assert box[0] >= 0 and box[1] <= width and box[2] <= box[3], box  # the whole URL shows, nothing cut
    for chart in driver.find_elements("css selector", "svg.chart"):
        right = driver.execute_script("return arguments[0].getBoundingClientRect().right", chart)
        assert right <= width
        labels = chart.find_elements("css selector", "text")
        assert any(label.get_attribute("textContent").startswith("№") for label in labels)  # the build axis
        assert any(label.get_attribute("textContent").startswith("последняя: ") for label in labels)  # the value
        for label in labels:
            height = driver.execute_script("return arguments[0].getBoundingClientRect().height", label)
            assert height >= 10, (label.get_attribute("textContent"), height)  # CSS pixels: readable


def test_the_page_fits_a_phone_and_a_laptop(tmp_path, emulator_factory, serve, browser):  # noqa: F811
    settings = three_feeds_settings(tmp_path, emulator_factory(products=60))
    build_three_feeds(settings)
    build_feed(settings, settings.feeds[0], sync=False)  # a second build: the chart has an axis from №1 to №2
    base = serve(settings)
    for name, metrics in (("phone", PHONE), ("laptop", LAPTOP)):
        view(browser, base, metrics)
        fits(browser)
        fresh = browser.find_element("id", "feed-fresh")
        assert fresh.find_element("id", "url-fresh").text == f"{settings.public_url}/feeds/fresh.xml"
        labels = [t.get_attribute("textContent") for t in fresh.find_elements("css selector", "svg.chart text")]
        assert "№1" in labels and "№2" in labels
        browser.save_screenshot(str(tmp_path / f"health-{name}.png"))
        if SCREENSHOTS:
            browser.save_screenshot(str(Path(SCREENSHOTS) / f"health-{name}.png"))
    browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_a_first_build_in_progress_is_building_not_an_error(tmp_path, emulator_factory, serve, browser):  # noqa: F811
    """A real first build, slowed by the emulator's latency so each phase can be looked at: while it syncs the
    feed is «собирается» and /healthz answers 200 with a note; then the goods are published and the page shows
    the pictures coming; then a second publication adds them."""
    emulator = emulator_factory(products=250)
    settings = Settings(data_dir=tmp_path / "data", moysklad=client_settings(emulator, read_timeout=30),
                        feeds=(FeedSettings(name="main", pictures="cache"),))
    base = serve(settings)
    emulator.faults.latency_ms = 700
    outcome = {}
    builder = threading.Thread(target=lambda: outcome.update(result=build_feed(settings, settings.feeds[0])), daemon=True)
    builder.start()

    def feed() -> dict:
        return requests.get(base + "/health.json", timeout=10).json()["feeds"][0]

    wait_for(lambda: feed()["state"] == "building" and feed()["progress"].get("stage") not in (None, "start"),
             60, "the first build to sync")
    reply = requests.get(base + "/healthz", timeout=10)
    assert reply.status_code == 200
    lines = reply.text.splitlines()
    assert lines[0] == "ok" and lines[1].startswith("фид main: собирается (первая сборка) — синхронизация с МоимСкладом")
    for name, metrics in (("phone", PHONE), ("laptop", LAPTOP)):
        view(browser, base, metrics)
        fits(browser)
        if SCREENSHOTS:
            browser.save_screenshot(str(Path(SCREENSHOTS) / f"first-build-{name}.png"))
        assert browser.find_element("id", "summary").text.startswith("Ошибок нет, идёт первая сборка")
        card = browser.find_element("id", "feed-main").text
        assert "Фид «main» собирается" in card
        assert "Ссылка для retailCRM появится здесь после первой публикации фида." in card
        assert not browser.find_elements("id", "url-main")  # no URL before the file exists
        assert "Следующая сборка\nидёт сейчас" in card and "только что" not in card
        assert "Идёт сборка — синхронизация с МоимСкладом" in card

    emulator.faults.latency_ms = 150  # the pictures take a few seconds now
    wait_for(lambda: feed()["last_success"] and feed()["progress"].get("stage") == "pictures", 60,
             "the goods to be published and the pictures to come")
    waiting = feed()["last_success"]["pictures_waiting"]
    assert waiting > PICTURES_BEFORE_PUBLISH
    assert requests.get(base + "/healthz", timeout=10).text == "ok\n"  # published: fresh
    view(browser, base, PHONE)
    fits(browser)
    if SCREENSHOTS:
        browser.save_screenshot(str(Path(SCREENSHOTS) / "pictures-coming-phone.png"))
    card = browser.find_element("id", "feed-main").text
    assert "Фид «main» свежий" in card and browser.find_element("id", "url-main").text.endswith("/feeds/main.xml")
    new_pictures = plural(waiting, "новой картинки", "новых картинок", "новых картинок")
    assert f"Фид опубликован без {grouped(waiting)} {new_pictures}, они догружаются" in card
    assert "Идёт сборка — загрузка картинок: " in card and f" из {grouped(waiting)} (" in card

    emulator.faults.latency_ms = 0
    builder.join(timeout=120)
    assert outcome["result"].with_pictures is not None
    done = feed()
    assert (done["state"], done["building"], done["last_success"]["number"]) == ("fresh", False, 2)
    assert done["last_success"]["with_pictures"]
    browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
