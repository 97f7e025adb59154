"""The command line as an operator uses it: real processes, real HTTP to the emulator."""

import os
import signal
import subprocess
import sys
import time

from emulator.harness import EMULATOR_TOKEN, ROOT
from store import CatalogStore
from tests.moysklad.test_sync import dump, run_sync


def write_config(tmp_path, server, token=EMULATOR_TOKEN):
    path = tmp_path / "config.yaml"
    path.write_text(
        f"data_dir: data\nmoysklad:\n  base_url: {server.base_url}\n  retry_base_delay: 0.05\n"
        f"feeds:\n  - name: main\n",
        encoding="utf-8",
    )
    env = dict(os.environ, SKLADBRIDGE_CONFIG=str(path), MOYSKLAD_TOKEN=token)
    return path, env


def flask(env, *args, **kwargs):
    return subprocess.run([sys.executable, "-m", "flask", "--app", "app", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, **kwargs)


def test_check_prints_what_the_account_holds(tmp_path, emulator):
    _, env = write_config(tmp_path, emulator)
    result = flask(env, "moysklad", "check")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    catalog = emulator.catalog
    assert "credentials" in out and "OK" in out
    assert "RUB" in out
    for price_type in catalog.price_types:
        assert price_type.name in out
    for warehouse in catalog.stores:
        assert warehouse.name in out
    archived = sum(1 for i in catalog.items.values() if i.archived)
    assert f"{len(catalog.items)} assortment items ({archived} archived), {len(catalog.folders)} groups" in out
    assert "stock report" in out and "unit cost" in out
    assert "MoySklad connection OK." in out
    # asked as the sync asks it: goods with nothing available are in the report too
    assert [e["query"]["filter"] for e in emulator.request_log if e["path"] == "/report/stock/all"] == [
        "stockMode=all;quantityMode=all"]


def test_check_with_a_wrong_token_exits_non_zero_and_says_what_to_fix(tmp_path, emulator):
    _, env = write_config(tmp_path, emulator, token="wrong")
    result = flask(env, "moysklad", "check")
    assert result.returncode == 1
    assert "MoySklad rejected the credentials: Ошибка аутентификации" in result.stderr
    assert "moysklad.token" in result.stderr
    assert "wrong" not in result.stdout + result.stderr  # the secret itself is never printed


def test_check_reports_an_unreachable_api(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("moysklad:\n  base_url: http://127.0.0.1:9/api/remap/1.2\n  token: t\n  max_retries: 0\n")
    result = flask(dict(os.environ, SKLADBRIDGE_CONFIG=str(path)), "moysklad", "check")
    assert result.returncode == 1
    assert "no complete answer from MoySklad" in result.stderr and "connection failed" in result.stderr


def test_a_config_error_stops_the_command_with_the_key_named(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("moysklad:\n  token: t\n  max_in_flight: 12\n")
    result = flask(dict(os.environ, SKLADBRIDGE_CONFIG=str(path)), "moysklad", "check")
    assert result.returncode != 0
    assert "moysklad.max_in_flight" in result.stderr


def test_sync_prints_a_summary(tmp_path, emulator):
    _, env = write_config(tmp_path, emulator)
    result = flask(env, "moysklad", "sync")
    assert result.returncode == 0, result.stderr
    assert "full sync #1 done" in result.stdout
    assert "0 throttled" in result.stdout
    store = CatalogStore(tmp_path / "data" / "catalog.sqlite")
    assert store.counts("moysklad")["offers"] == len(emulator.catalog.items)
    store.close()


def test_a_sync_killed_mid_run_loses_nothing_and_the_next_run_recovers(tmp_path, emulator):
    store = CatalogStore(tmp_path / "data" / "catalog.sqlite")
    run_sync(emulator, store)
    before = dump(store)
    emulator.catalog.update_item(next(iter(emulator.catalog.items)), name="Изменено перед сбоем")
    emulator.faults.latency_ms = 400
    emulator.reset_stats()
    _, env = write_config(tmp_path, emulator)
    process = subprocess.Popen([sys.executable, "-m", "flask", "--app", "app", "moysklad", "sync", "--full"],
                               cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not any(e["path"] == "/report/stock/bystore/current" for e in emulator.request_log):
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()

    assert dump(store) == before
    emulator.faults.latency_ms = 0
    run_sync(emulator, store)
    statuses = [r["status"] for r in store.recent_runs()]
    assert statuses == ["ok", "interrupted", "ok"]
    store.close()


def test_check_names_a_missing_permission(tmp_path, emulator):
    emulator.faults.fail_after = {"path": "/report/stock", "after": 0, "status": 403}
    _, env = write_config(tmp_path, emulator)
    result = flask(env, "moysklad", "check")
    assert result.returncode == 1
    assert "lacks the permission to view the stock report (Остатки → Просматривать)" in result.stderr
    assert "credentials" in result.stdout  # what did work is still shown
