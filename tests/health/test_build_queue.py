"""The build queue on the operator pages: the scheduling process writes its state to a file, so the page,
/healthz and /metrics show it whichever worker answers; a build that waits longer than its feed's
interval is a problem the operator is told about."""

from __future__ import annotations

import threading
import time

import requests
from prometheus_client.parser import text_string_to_metric_families

from core.build_pool import QUEUE_FILE, SCHEDULED, BuildPool
from core.settings import FeedSettings, Settings
from emulator.harness import client_settings, wait_for
from tests.health.test_health import browser  # noqa: F401 (a fixture)

WAITING_TOO_LONG = "фид quick: сборка ждёт в очереди дольше интервала"


def slow_and_quick(tmp_path, emulator_factory, serve, pool_size: int) -> tuple[str, BuildPool]:
    """The page of feeds "slow" (hourly) and "quick" (every 0.6 s) served, and a build pool of ``pool_size`` writing
    its state where the page reads it."""
    settings = Settings(data_dir=tmp_path / "data", moysklad=client_settings(emulator_factory(products=20)),
                        max_concurrent_builds=pool_size,
                        feeds=(FeedSettings(name="slow", pictures="none"),
                               FeedSettings(name="quick", pictures="none", interval_minutes=0.01)))
    return serve(settings), BuildPool(settings.build_pool_size, settings.data_dir / QUEUE_FILE)


def test_the_queue_and_a_build_waiting_longer_than_its_interval_are_shown(tmp_path, emulator_factory, serve, browser):  # noqa: F811
    base, pool = slow_and_quick(tmp_path, emulator_factory, serve, pool_size=1)
    long_build_ends = threading.Event()
    try:
        pool.submit("", SCHEDULED, "slow", long_build_ends.wait)  # takes the pool's one place
        pool.submit("other", SCHEDULED, "quick", lambda: None)  # another account's waits behind it, past its 0.6 s interval
        healthz = wait_for(lambda: (reply := requests.get(base + "/healthz", timeout=10)).status_code == 503
                           and WAITING_TOO_LONG in reply.text and reply.text, 30, "the wait to be reported")
        assert "увеличьте max_concurrent_builds (сейчас 1) или разнесите аккаунты" in healthz

        metrics = {sample.name: sample.value for family in text_string_to_metric_families(
            requests.get(base + "/metrics", timeout=10).text) for sample in family.samples}
        assert metrics["skladbridge_build_pool_size"] == 1
        assert (metrics["skladbridge_build_queue_running"], metrics["skladbridge_build_queue_waiting"]) == (1, 1)
        assert metrics["skladbridge_build_queue_oldest_wait_seconds"] >= 0.6 * 0.5  # whole seconds on the page

        data = requests.get(base + "/health.json", timeout=10).json()
        feeds = {feed["name"]: feed for feed in data["feeds"]}
        assert feeds["slow"]["queue"]["state"] == "running" and feeds["quick"]["queue"]["state"] == "waiting"
        assert data["queue"]["waiting_works"][0]["kind_text"] == "по расписанию"

        browser.get(base + "/")
        queue = browser.find_element("id", "queue").text
        assert "Очередь сборок" in queue and "до 1 сборки" in queue
        assert "Идут сейчас\n1: slow (по расписанию" in queue and "Ждут\n1, дольше всех" in queue
        assert "ждёт в очереди сборок" in browser.find_element("id", "feed-quick").text
        assert WAITING_TOO_LONG in browser.find_element("id", "summary").text
        browser.save_screenshot(str(tmp_path / "queue.png"))
    finally:
        long_build_ends.set()
        pool.shutdown(wait=True)
    assert wait_for(lambda: requests.get(base + "/health.json", timeout=10).json()["queue"]["running"] == 0, 10,
                    "the page to show the pool empty")


def test_a_build_that_has_just_started_waiting_is_no_problem_whatever_the_schedulers_next_runs(tmp_path, emulator_factory,
                                                                                                serve):
    """The scheduler writes each feed's next fire time (an hour or two ahead) beside the queue; a wait must still be
    counted from now, or every start-up of many accounts turned /healthz red with waits of hours."""
    settings = Settings(data_dir=tmp_path / "data", moysklad=client_settings(emulator_factory(products=20)),
                        max_concurrent_builds=1,
                        feeds=(FeedSettings(name="slow", pictures="none"), FeedSettings(name="quick", pictures="none")))
    base = serve(settings)
    pool = BuildPool(settings.build_pool_size, settings.data_dir / QUEUE_FILE)
    pool.next_runs = lambda: {"slow": time.time() + 7200, "quick": time.time() + 7200}
    long_build_ends = threading.Event()
    try:
        pool.submit("", SCHEDULED, "slow", long_build_ends.wait)
        pool.submit("", SCHEDULED, "quick", lambda: None)  # waits behind it: seconds, against an interval of an hour
        data = wait_for(lambda: (reply := requests.get(base + "/health.json", timeout=10).json())["queue"]
                        and reply["queue"]["waiting"] == 1 and reply, 30, "the queue on the page")
        quick = {feed["name"]: feed for feed in data["feeds"]}["quick"]
        assert quick["queue"]["state"] == "waiting" and quick["queue"]["wait_seconds"] < 60
        assert not any("ждёт в очереди дольше интервала" in problem for problem in data["problems"])
        assert quick["next_run_at"] is not None  # the plan is shown as the next build
    finally:
        long_build_ends.set()
        pool.shutdown(wait=True)



def test_a_build_waiting_behind_its_own_accounts_build_is_not_blamed_on_the_pool(tmp_path, emulator_factory, serve):
    """An account's builds never overlap, so a feed whose previous build (or a sibling feed's) runs longer than its
    interval waits however large the pool: the page said the pool could not keep up and told the operator to raise
    max_concurrent_builds, which changes nothing (and /healthz was 503 through a long first full sync). A build
    that really lags shows as the feed turning stale."""
    base, pool = slow_and_quick(tmp_path, emulator_factory, serve, pool_size=8)
    long_build_ends = threading.Event()
    try:
        pool.submit("", SCHEDULED, "slow", long_build_ends.wait)
        pool.submit("", SCHEDULED, "quick", lambda: None)  # the same account: waits with seven places free

        def waited_past_its_interval():
            data = requests.get(base + "/health.json", timeout=10).json()
            quick = {feed["name"]: feed for feed in data["feeds"]}["quick"]
            return (quick["queue"] and quick["queue"]["state"] == "waiting"
                    and quick["queue"]["wait_seconds"] > quick["schedule"]["interval_seconds"] and data)

        data = wait_for(waited_past_its_interval, 30, "the quick feed to wait past its interval")
        assert not any("ждёт в очереди дольше интервала" in problem for problem in data["problems"]), data["problems"]
    finally:
        long_build_ends.set()
        pool.shutdown(wait=True)
