"""Feed builds on schedule: one scheduler per data directory however many workers, builds never overlap."""

import dataclasses
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import scheduler as scheduler_module
from core.cron import crontab_trigger
from core.settings import FeedSettings, Settings
from emulator.harness import ROOT, client_settings, wait_for
from feeds.build import BuildResult
from scheduler import start_scheduler

TICK_SECONDS = 3  # interval_minutes 0.05


def runs(data_dir: Path, source: str | None = None, kind: str | None = None) -> list[dict]:
    """Rows of the runs table in start order (times have a resolution of one second)."""
    conn = sqlite3.connect(data_dir / "catalog.sqlite")
    conn.row_factory = sqlite3.Row
    try:
        rows = conn.execute("SELECT * FROM runs WHERE coalesce(?, source) = source AND coalesce(?, kind) = kind "
                            "ORDER BY id", [source, kind]).fetchall()
    except sqlite3.OperationalError:  # no store yet
        rows = []
    conn.close()
    return [dict(row) for row in rows]


def seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def test_three_gunicorn_workers_build_once_per_tick(gunicorn):
    server = gunicorn(workers=3)
    server.wait_ready()
    time.sleep(12)
    elapsed = server.stop()

    assert len(server.scheduler_pids()) == 1, server.log()
    attempts = server.build_lines()  # each scheduler logs every attempt, failed ones too
    assert 2 <= len(attempts) <= elapsed / TICK_SECONDS + 2, attempts
    builds = runs(server.data_dir, "feed:main", "build")
    assert len(builds) == len(attempts), server.log()
    assert {row["status"] for row in builds} == {"ok"}, builds
    starts = [seconds(row["started_at"]) for row in runs(server.data_dir, "moysklad", "sync")]
    assert len(starts) == len(builds)
    assert all(later - earlier >= TICK_SECONDS - 1 for earlier, later in zip(starts, starts[1:])), starts


def test_when_the_scheduling_worker_dies_another_takes_over(gunicorn):
    server = gunicorn(workers=3)
    lock = server.data_dir / "scheduler.lock"
    first = wait_for(lambda: server.scheduler_pids(), 30, "the scheduler to start")[0]
    assert lock.read_text().strip() == first
    wait_for(lambda: runs(server.data_dir, "feed:main", "build"), 30, "the first build")
    killed_at = time.time()
    os.kill(int(first), signal.SIGKILL)

    pids = wait_for(lambda: server.scheduler_pids()[1:], 35, "another worker to take the scheduler over")
    assert pids[0] != first and lock.read_text().strip() == pids[0]
    wait_for(lambda: any(seconds(row["started_at"]) >= int(killed_at) + 1 and row["status"] == "ok"
                         for row in runs(server.data_dir, "feed:main", "build")), 30, "a build by the new scheduler")
    server.stop()
    assert len(server.scheduler_pids()) == 2, server.log()


@pytest.fixture
def two_feeds(tmp_path, emulator_factory) -> Settings:
    server = emulator_factory(products=60)
    return Settings(data_dir=tmp_path / "data", moysklad=client_settings(server),
                    feeds=(FeedSettings(name="a", pictures="none", interval_minutes=0.05),
                           FeedSettings(name="b", pictures="none", interval_minutes=0.05)))


def test_feeds_due_at_the_same_tick_never_build_at_once(two_feeds, build_spans):
    from app import create_app

    spans = build_spans
    running = start_scheduler(create_app(two_feeds), retry_seconds=None)
    try:
        wait_for(lambda: {name for *_, name in spans} == {"a", "b"} and len(spans) >= 4, 30, "both feeds built twice")
    finally:
        running.shutdown(wait=True)

    spans.sort()
    assert all(end <= next_start for (_, end, *_), (next_start, *_) in zip(spans, spans[1:])), spans
    rows = runs(two_feeds.data_dir)  # syncs and builds alike run one at a time
    assert {row["status"] for row in rows} == {"ok"}
    assert all(row["finished_at"] <= later["started_at"] for row, later in zip(rows, rows[1:])), rows


def test_a_second_process_waits_and_takes_over_when_the_first_stops(two_feeds):
    from app import create_app

    owner_app, waiting_app = create_app(two_feeds), create_app(two_feeds)
    owner = start_scheduler(owner_app, retry_seconds=None)
    assert owner is not None and owner_app.extensions["scheduler"] is owner
    assert start_scheduler(waiting_app, retry_seconds=0.2) is None  # another gunicorn worker
    time.sleep(0.5)
    assert "scheduler" not in waiting_app.extensions
    owner.shutdown(wait=True)  # frees the lock, as the death of the owning process does

    successor = wait_for(lambda: waiting_app.extensions.get("scheduler"), 5, "the waiting process to take over")
    try:
        assert successor.running
        assert {job.id for job in successor.get_jobs()} == {"feed:a", "feed:b", "mailbox-poll"}
    finally:
        successor.shutdown(wait=True)


def test_a_failed_build_is_logged_and_the_next_tick_still_builds(two_feeds, caplog, monkeypatch):
    from app import create_app
    from feeds.build import BuildFailed

    attempts = []

    def failing_build(settings, feed, **kwargs):
        attempts.append(feed.name)
        raise BuildFailed("the new feed has 3 offers, the published one 300")

    monkeypatch.setattr(scheduler_module, "build_feed", failing_build)
    running = start_scheduler(create_app(two_feeds), retry_seconds=None)
    try:
        wait_for(lambda: attempts.count("a") >= 2, 10, "a second attempt after a failure")
    finally:
        running.shutdown(wait=True)
    assert "feed a: build failed in" in caplog.text and "the published one 300" in caplog.text


@pytest.mark.parametrize("weekdays, expected", [
    ("1-5", ["Mon", "Tue", "Wed", "Thu", "Fri"]), ("0", ["Sun"]), ("7", ["Sun"]), ("*/2", ["Sun", "Tue", "Thu", "Sat"]),
    ("sat,sun", ["Sat", "Sun"]), ("mon-wed", ["Mon", "Tue", "Wed"]),
])
def test_crontab_weekdays_count_from_sunday_as_cron_does(weekdays, expected):
    trigger = crontab_trigger(f"15 6 * * {weekdays}")
    moment, fired = datetime(2024, 1, 1, tzinfo=timezone.utc), set()  # a Monday
    for _ in range(7):
        moment = trigger.get_next_fire_time(None, moment + timedelta(minutes=1))
        fired.add(moment.strftime("%a"))
    assert fired == set(expected) and (moment.hour, moment.minute) == (6, 15)


def test_a_crontab_with_both_a_day_and_a_weekday_runs_on_either_as_cron_does():
    """cron(8): when the day of month and the weekday are both restricted, a day matching either runs the job. APScheduler
    wants both, so "the 13th and every Friday" ran on Fridays the 13th only: in 2024 once, in September."""
    trigger = crontab_trigger("0 6 13 * 5")
    moment, fired = datetime(2024, 1, 1, tzinfo=timezone.utc), []  # a Monday; the 13th is a Saturday
    for _ in range(6):
        moment = trigger.get_next_fire_time(None, moment + timedelta(minutes=1))
        fired.append(moment.strftime("%d %a %H:%M"))
    assert fired == ["05 Fri 06:00", "12 Fri 06:00", "13 Sat 06:00", "19 Fri 06:00", "26 Fri 06:00", "02 Fri 06:00"]
    starred = crontab_trigger("0 6 */2 * 5")  # a field starting with * counts as unrestricted: both must match
    assert starred.get_next_fire_time(None, datetime(2024, 1, 1, tzinfo=timezone.utc)).strftime("%d %a") == "05 Fri"
    assert starred.get_next_fire_time(None, datetime(2024, 1, 6, tzinfo=timezone.utc)).strftime("%d %a") == "19 Fri"


def scheduled_trigger(two_feeds: Settings, cron: str):
    """The trigger the scheduler gives feed a on this crontab: what decides when it is built."""
    from app import create_app

    settings = dataclasses.replace(two_feeds, feeds=(dataclasses.replace(two_feeds.feeds[0], cron=cron),))
    running = start_scheduler(create_app(settings), retry_seconds=None)
    try:
        return running.get_job("feed:a").trigger
    finally:
        running.shutdown(wait=True)


def test_a_cron_feed_is_scheduled_by_its_crontab(two_feeds, monkeypatch):
    monkeypatch.setattr(scheduler_module, "build_feed",
                        lambda settings, feed, **kwargs: BuildResult(run_id=1, feed=feed.name, published=True, offers=0))
    trigger = scheduled_trigger(two_feeds, "*/30 6-22 * * 1-5")
    zone = trigger.timezone  # the server's local time, as cron reads it

    def next_run(after: datetime) -> datetime:
        return trigger.get_next_fire_time(None, after.replace(tzinfo=zone))

    # every half hour from 06:00 to 22:30 on weekdays, each run up to a minute late: read from the job itself,
    # not compared with another call of crontab_trigger (the code that made it)
    for after, expected in ((datetime(2024, 1, 5, 23, 0), datetime(2024, 1, 8, 6, 0)),  # Friday night: Monday
                            (datetime(2024, 1, 8, 6, 10), datetime(2024, 1, 8, 6, 30)),
                            (datetime(2024, 1, 8, 22, 31), datetime(2024, 1, 9, 6, 0)),
                            (datetime(2024, 1, 6, 12, 0), datetime(2024, 1, 8, 6, 0))):  # Saturday: Monday
        late = next_run(after) - expected.replace(tzinfo=zone)
        assert timedelta(0) <= late <= timedelta(seconds=60), (after, next_run(after))


def test_an_every_minute_cron_feed_runs_within_a_quarter_minute_of_each_minute(two_feeds):
    """Each cron run comes up to a minute late (so many feeds do not fall due at once); for «* * * * *» that let a
    run drift into the next one's minute, and the page showed the feed stale between two late runs."""
    trigger = scheduled_trigger(two_feeds, "* * * * *")
    minute = datetime(2024, 1, 8, 10, 0, tzinfo=trigger.timezone)
    lateness = [(trigger.get_next_fire_time(None, minute + timedelta(minutes=n, seconds=1)) -
                 (minute + timedelta(minutes=n + 1))).total_seconds() for n in range(40)]
    assert all(0 <= late <= 15 for late in lateness), lateness
    daily = crontab_trigger("0 6 * * *", jitter=60)  # the minute's spread stays for longer schedules
    assert daily.jitter == 60


def test_a_cron_feed_runs_on_a_server_whose_tz_is_a_posix_offset(tmp_path):
    """TZ=MSK-3 (a POSIX zone, as old images set it) took down every worker at start-up: APScheduler asks tzlocal for
    a zone name and got an exception. The schedule now follows the offset the C library reads, as cron does."""
    script = (
        "from pathlib import Path\n"
        "from app import create_app\n"
        "from core.settings import FeedSettings, Settings\n"
        "from scheduler import start_scheduler\n"
        f"settings = Settings(data_dir=Path({str(tmp_path / 'data')!r}), feeds=(FeedSettings(name='a', source='exchange', "
        "cron='30 6 * * *'),), public_url='https://feeds.example')\n"
        "running = start_scheduler(create_app(settings), retry_seconds=None)\n"
        "print(running.get_job('feed:a').next_run_time.isoformat())\n"
        "running.shutdown(wait=True)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "TZ": "MSK-3"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    next_run = datetime.fromisoformat(result.stdout.strip())
    assert next_run.utcoffset() == timedelta(hours=3)
    assert (next_run.hour, next_run.minute) == (6, 30) and next_run.second < 60
    assert "set TZ to a name such as Europe/Moscow" in result.stderr


def test_a_run_missed_by_hours_is_made_up_once(two_feeds, monkeypatch):
    """A process stalled past a daily feed's time (a suspended VM, a paused container, the clock set forward) builds
    it once when it runs again, however late, as config.example.yaml promises; it skipped the day when the run was
    missed by more than an hour."""
    from app import create_app

    built = []
    monkeypatch.setattr(scheduler_module, "build_feed", lambda settings, feed, **kwargs: built.append(feed.name)
                        or BuildResult(run_id=1, feed=feed.name, published=True, offers=0))
    daily = dataclasses.replace(two_feeds, feeds=(dataclasses.replace(two_feeds.feeds[0], interval_minutes=24 * 60),))
    running = start_scheduler(create_app(daily), retry_seconds=None)
    try:
        wait_for(lambda: built == ["a"], 10, "the build at start-up")
        missed = datetime.now(timezone.utc) - timedelta(hours=3)  # its time passed while the process stood still
        running.get_job("feed:a").modify(next_run_time=missed)
        wait_for(lambda: len(built) == 2, 10, "the missed run made up")
        assert running.get_job("feed:a").next_run_time > missed + timedelta(hours=23)  # once, then on its schedule
    finally:
        running.shutdown(wait=True)
    assert built == ["a", "a"]
