"""The command line as an operator uses it: real processes, real HTTP to the emulator."""

import os
import re
import signal
import subprocess
import sys
import time

from emulator.harness import EMULATOR_TOKEN, ROOT, free_port
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


def test_check_against_a_refused_port_ends_at_once_and_names_the_address(tmp_path):
    """One try per request and a short timeout, whatever the config's retries: the operator is waiting."""
    port = free_port()  # nothing listens there
    path = tmp_path / "config.yaml"
    path.write_text(f"moysklad:\n  base_url: http://127.0.0.1:{port}/api/remap/1.2\n  token: t\n  max_retries: 5\n"
                    "feeds: [{name: main}]\n")
    started = time.monotonic()
    result = flask(dict(os.environ, SKLADBRIDGE_CONFIG=str(path)), "moysklad", "check")
    assert time.monotonic() - started < 20  # the requirement itself (issue 14, item 4); it takes about a second
    assert result.returncode == 1
    assert (f"PROBLEM: cannot reach MoySklad: 127.0.0.1:{port} refuses connections (nothing listens there): "
            "check moysklad.base_url (or MOYSKLAD_BASE_URL; MoySklad's is https://api.moysklad.ru/api/remap/1.2)") \
        in result.stderr
    assert result.stderr.count("PROBLEM") == 1  # the first request says it all; nothing else was tried


def test_check_says_the_address_must_end_in_the_api_path(tmp_path, emulator):
    path = tmp_path / "config.yaml"
    path.write_text(f"moysklad:\n  base_url: {emulator.origin}/api\n  token: {EMULATOR_TOKEN}\n"
                    "feeds: [{name: main}]\n")
    result = flask(dict(os.environ, SKLADBRIDGE_CONFIG=str(path)), "moysklad", "check")
    assert result.returncode == 1
    assert (f"the address must end in /api/remap/1.2 (MoySklad's is https://api.moysklad.ru/api/remap/1.2); "
            f"{emulator.origin}/api has the path /api") in result.stderr
    assert result.stderr.count("PROBLEM") == 1
    assert len(emulator.request_log) == 1  # tried once


def test_check_names_each_feed_name_the_account_lacks_and_what_it_has(tmp_path, emulator):
    path = tmp_path / "config.yaml"
    path.write_text(f"moysklad:\n  base_url: {emulator.base_url}\n  token: {EMULATOR_TOKEN}\n"
                    "feeds:\n  - name: main\n    price_type: Розничная цена\n    stores: [Основной склад, Склад 9]\n"
                    "    vendor_attribute: Производитель\n    params: [{attribute: Материал}]\n"
                    "  - name: wholesale\n    price_type: Оптовая цена\n", encoding="utf-8")
    result = flask(dict(os.environ, SKLADBRIDGE_CONFIG=str(path)), "moysklad", "check")
    assert result.returncode == 1
    price_types = ", ".join(f"«{p.name}»" for p in emulator.catalog.price_types)
    warehouses = ", ".join(f"«{s.name}»" for s in emulator.catalog.stores)
    attributes = ", ".join(f"«{a.name}»" for a in emulator.catalog.attribute_defs)
    problems = [line for line in result.stderr.splitlines() if "PROBLEM" in line]
    assert problems == [
        (f"  PROBLEM: feed main: price_type «Розничная цена» is not a price type in MoySklad "
         f"(price types there: {price_types})"),
        f"  PROBLEM: feed main: stores: «Склад 9» is not a warehouse in MoySklad (warehouses there: {warehouses})",
        (f"  PROBLEM: feed main: vendor_attribute «Производитель» is not an attribute of goods in MoySklad "
         f"(attributes there: {attributes})"),
    ]
    assert re.search(r"^  feed wholesale \.+ every name it uses exists$", result.stdout, re.MULTILINE)


def test_check_of_the_demo_says_it_is_the_demo(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOYSKLAD_", "SKLADBRIDGE_"))}
    result = subprocess.run([sys.executable, "-m", "flask", "--app", "app", "moysklad", "check"], cwd=tmp_path,
                            env=dict(env, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("DEMO: no config file, so this is the demo")
    assert result.stdout.rstrip().endswith("MoySklad connection OK (the DEMO emulator, not your account).")
    assert (tmp_path / "demo-data").is_dir() and not (tmp_path / "data").exists()


def test_credentials_in_the_environment_without_a_config_file_reach_that_account_not_the_demo(tmp_path, emulator):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOYSKLAD_", "SKLADBRIDGE_"))}
    env.update(PYTHONPATH=str(ROOT), MOYSKLAD_TOKEN=EMULATOR_TOKEN, MOYSKLAD_BASE_URL=emulator.base_url)
    result = subprocess.run([sys.executable, "-m", "flask", "--app", "app", "moysklad", "check"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "DEMO" not in result.stdout + result.stderr
    assert re.search(rf"^  API \.+ {re.escape(emulator.base_url)} \(token\)$", result.stdout, re.MULTILINE)
    assert any(entry["path"] == "/context/companysettings" for entry in emulator.request_log)
    assert result.stdout.rstrip().endswith("MoySklad connection OK.")


def test_check_without_credentials_says_there_is_nothing_to_check(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("feeds: [{name: shop, source: exchange}]\n")
    result = flask(dict(os.environ, SKLADBRIDGE_CONFIG=str(path)), "moysklad", "check")
    assert result.returncode == 1
    assert "No MoySklad credentials are configured" in result.stderr and "Traceback" not in result.stderr


def test_a_config_error_stops_the_command_with_one_line_naming_the_key(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("moysklad:\n  token: t\n  max_in_flight: 12\n")
    result = flask(dict(os.environ, SKLADBRIDGE_CONFIG=str(path)), "moysklad", "check")
    assert result.returncode == 1
    assert result.stderr == (f"Error: config error: {path}: moysklad.max_in_flight: MoySklad allows at most 5 "
                             "parallel requests, got 12\n")


def test_sync_prints_a_summary(tmp_path, emulator):
    _, env = write_config(tmp_path, emulator)
    result = flask(env, "moysklad", "sync")
    assert result.returncode == 0, result.stderr
    assert "full sync #1 done" in result.stdout
    assert "0 throttled" in result.stdout
    store = CatalogStore(tmp_path / "data" / "catalog.sqlite")
    assert store.counts("moysklad")["offers"] == len(emulator.catalog.items)
    store.close()


def test_a_sync_is_numbered_in_the_log_as_on_the_health_page(tmp_path, emulator):
    """After a build the log and the command said «sync #4» for the page's «синхронизация №2»: the run's id, which
    every source's runs share, where the page counts syncs alone."""
    _, env = write_config(tmp_path, emulator)
    assert flask(env, "feeds", "build").returncode == 0  # sync №1 and build №1
    result = flask(env, "moysklad", "sync")
    assert result.returncode == 0, result.stderr
    assert "sync #2 done" in result.stdout and "moysklad sync #2 (" in result.stderr
    with CatalogStore(tmp_path / "data" / "catalog.sqlite") as store:
        assert store.last_run("moysklad", "sync")["number"] == 2


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
