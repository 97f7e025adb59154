"""Thirty MoySklad accounts on one instance: one emulator stands in for all of them (a token and a rate
budget each), the app answers webhooks and the build button over loopback, and the scheduler's pool
runs the builds: never more than max_concurrent_builds at once, never two of one account, every
account's first build before any account's second, asked-for builds before scheduled ones."""

from __future__ import annotations

import re
import threading
import time
from collections import defaultdict
from itertools import pairwise

import pytest
import requests

from core.build_pool import read_queue_state
from core.settings import AccountSettings, FeedSettings, Settings, WebhookSettings
from emulator.harness import client_settings, wait_for
from scheduler import start_scheduler

ACCOUNTS = 30
POOL = 3
BUSY_ACCOUNT = "shop-00"  # four feeds: under first come, first served it would take four turns in a row
HOOKED = "shop-29"  # last in line: a MoySklad webhook asks for its rebuild
CLICKED = "shop-28"  # next to last: its feed's build button is pressed
HOOK_SECRET = "shop-29-hook-secret-0123456789"


def account_feeds(index: int) -> tuple[FeedSettings, ...]:
    names = [f"feed-{index:02d}{suffix}" for suffix in "abcd"] if index == 0 else [f"feed-{index:02d}"]
    return tuple(FeedSettings(name=name, pictures="none", interval_minutes=0.1) for name in names)


@pytest.fixture
def instance(tmp_path, emulator_factory) -> Settings:
    tokens = [f"shop-token-{index:02d}" for index in range(ACCOUNTS)]
    server = emulator_factory(products=12, other_tokens=tuple(tokens))
    server.faults.latency_ms = 60  # a build takes about a second, as with a far-away MoySklad
    accounts = tuple(AccountSettings(name=f"shop-{index:02d}", moysklad=client_settings(server, token=tokens[index]),
                                     feeds=account_feeds(index),
                                     webhook_secret=HOOK_SECRET if f"shop-{index:02d}" == HOOKED else "")
                     for index in range(ACCOUNTS))
    return Settings(data_dir=tmp_path / "data", max_concurrent_builds=POOL, accounts=accounts,
                    webhooks=WebhookSettings(debounce_seconds=0))


def test_thirty_accounts_share_a_bounded_fair_pool_and_asked_for_builds_go_first(instance, serve, build_spans):
    from app import create_app

    spans = build_spans  # (start, end, account, feed) of every build
    base = serve(instance)
    # Both requests wait in the mailbox when the scheduler starts with every feed's first build queued.
    hook = requests.post(f"{base}/webhooks/moysklad/{HOOK_SECRET}",
                         json={"events": [{"meta": {"type": "product"}, "action": "UPDATE"}]}, timeout=10)
    assert hook.json() == {"ok": True, "rebuild": True, "stock": False}
    press_build_button(base, "feed-28")

    seen_queue: list[dict] = []
    watching = threading.Event()

    def watch_queue_file() -> None:
        while not watching.is_set():
            state = read_queue_state(instance.data_dir)
            if state:
                seen_queue.append(state)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch_queue_file, daemon=True)
    watcher.start()
    running = start_scheduler(create_app(instance), retry_seconds=None)
    try:
        def built_twice() -> bool:
            per_account = builds_by_account(spans)
            return (len(per_account) == ACCOUNTS and all(len(builds) >= 2 for builds in per_account.values())
                    and len(per_account[BUSY_ACCOUNT]) >= 4)

        wait_for(built_twice, 120, "every account built twice (and every feed of the busy one)")
        page = requests.get(base + "/", timeout=30).text
        metrics = requests.get(base + "/metrics", timeout=30).text
    finally:
        running.shutdown(wait=True)
        watching.set()
        watcher.join()

    # The bound: never more than POOL builds at once, and the pool was used to the full.
    assert max_overlap(spans) == POOL, sorted(spans)
    assert 0 < max(len(state["running"]) for state in seen_queue) <= POOL
    assert max(len(state["waiting"]) for state in seen_queue) >= ACCOUNTS - POOL
    # One account's builds never overlap (its store's writer lock, its MoySklad budget).
    for account, builds in builds_by_account(spans).items():
        assert all(end <= later for (_, end, _), (later, _, _) in pairwise(builds)), account

    per_account = builds_by_account(spans)
    firsts = {account: builds[0][0] for account, builds in per_account.items()}
    # Fairness: every account's first build started before any account's second (the accounts whose first
    # build was asked for have had a turn early), the four feeds of BUSY_ACCOUNT included.
    scheduled_only = {account: builds for account, builds in per_account.items() if account not in (HOOKED, CLICKED)}
    assert max(firsts.values()) < min(builds[1][0] for builds in scheduled_only.values())
    assert [feed for _, _, feed in per_account[BUSY_ACCOUNT][:4]] == ["feed-00a", "feed-00b", "feed-00c", "feed-00d"]
    # Priority: the webhook's and the button's builds, asked for after 30 scheduled ones were queued,
    # started before the first builds of most accounts that were ahead of them in the queue.
    for account in (HOOKED, CLICKED):
        overtaken = [other for other, first in firsts.items() if other not in (HOOKED, CLICKED) and first > firsts[account]]
        assert len(overtaken) >= ACCOUNTS // 2, (account, sorted(firsts.items(), key=lambda item: item[1]))

    # The page and /metrics show the queue (the scheduler's state file, whichever worker answers).
    assert 'id="queue"' in page and "Очередь сборок" in page and f"до {POOL} сборок" in page
    assert re.search(rf"^skladbridge_build_pool_size {POOL}\.0$", metrics, re.MULTILINE)
    assert re.search(r"^skladbridge_build_queue_waiting \d+\.0$", metrics, re.MULTILINE)


def press_build_button(base: str, feed: str) -> None:
    """The health page's «Собрать сейчас», as a browser sends it (page cookie, form token, same origin)."""
    session = requests.Session()
    html = session.get(base + "/", timeout=30).text
    token = re.search(rf'action="/health/build/{feed}">\s*<input type="hidden" name="csrf" value="([^"]+)"', html).group(1)
    reply = session.post(f"{base}/health/build/{feed}", data={"csrf": token}, headers={"Origin": base},
                         allow_redirects=False, timeout=30)
    assert reply.status_code == 303


def builds_by_account(spans) -> dict[str, list[tuple[float, float, str]]]:
    found = defaultdict(list)
    for start, end, account, feed in sorted(spans):
        found[account].append((start, end, feed))
    return dict(found)


def max_overlap(spans) -> int:
    """The most builds running at one moment."""
    events = sorted([(start, 1) for start, *_ in spans] + [(end, -1) for _, end, *_ in spans])
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most
