"""Configuration: defaults, environment secrets, errors that name the key, the example kept in step."""

import os
import re
import tempfile
from pathlib import Path

import pytest
import yaml

from core.settings import ConfigError, load_settings, prepare_data_dirs, redacted, setting_keys
from emulator.harness import ROOT


def write(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_without_a_config_file_the_demo_runs_on_the_emulator_in_a_folder_of_its_own(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(environ={})
    assert settings.is_demo
    assert settings.moysklad.emulator.products > 0
    assert settings.data_dir == tmp_path / "demo-data"  # never the ./data a copied config.example.yaml uses
    assert [f.name for f in settings.feeds] == ["demo"]
    assert "DEMO" in settings.demo_notice and str(tmp_path / "demo-data") in settings.demo_notice
    in_docker = load_settings(environ={"SKLADBRIDGE_DATA_DIR": str(tmp_path / "volume")})
    assert in_docker.is_demo and in_docker.data_dir == tmp_path / "volume" / "demo-data"


@pytest.mark.parametrize("variables", [{"MOYSKLAD_TOKEN": "real-token"},
                                       {"MOYSKLAD_LOGIN": "admin@shop", "MOYSKLAD_PASSWORD": "secret-pass"},
                                       {"MOYSKLAD_BASE_URL": "https://proxy.example/api/remap/1.2", "MOYSKLAD_TOKEN": "t"}])
def test_moysklad_credentials_in_the_environment_without_a_file_mean_a_real_account(tmp_path, monkeypatch, variables):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(environ=variables)
    assert not settings.is_demo
    assert settings.data_dir == tmp_path / "data"
    assert [(f.name, f.source) for f in settings.feeds] == [("main", "moysklad")]
    assert settings.moysklad.base_url == variables.get("MOYSKLAD_BASE_URL", "https://api.moysklad.ru/api/remap/1.2")


def test_an_address_alone_in_the_environment_is_a_real_account_missing_its_credentials(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as error:
        load_settings(environ={"MOYSKLAD_BASE_URL": "https://api.moysklad.ru/api/remap/1.2"})
    assert str(error.value).startswith("the environment (no config file): moysklad: no credentials, needed by feed main")
    assert "MOYSKLAD_TOKEN" in str(error.value)


def test_an_exchange_only_config_needs_no_moysklad_section(tmp_path):
    path = write(tmp_path, "exchange: {login: 1c, password: exchange-pass}\nfeeds: [{name: shop, source: exchange}]\n")
    settings = load_settings(path, environ={})
    assert not settings.is_demo and not settings.moysklad.token
    assert [f.source for f in settings.feeds] == ["exchange"] and settings.moysklad_feeds == ()


def test_a_named_config_that_is_missing_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(environ={"SKLADBRIDGE_CONFIG": str(tmp_path / "nope.yaml")})


@pytest.mark.parametrize("variable, key, value, error", [
    ("MOYSKLAD_BASE_URL", "moysklad.base_url", "api.moysklad.ru/api/remap/1.2", "must be an http(s) URL"),
    ("SKLADBRIDGE_PROXY_HOPS", "proxy_hops", "one", "must be a number"),
])
def test_a_bad_value_from_the_environment_is_blamed_on_its_variable_not_on_the_file(tmp_path, variable, key, value, error):
    """The operator would search config.yaml for a value that is not there; the same value in the file is the file's."""
    config = "moysklad: {token: t}\nfeeds: [{name: a}]\n"
    with pytest.raises(ConfigError) as raised:
        load_settings(write(tmp_path, config), environ={variable: value})
    assert str(raised.value).startswith(f"environment variable {variable}: {key}: {error}")

    section, _, name = key.rpartition(".")
    in_file = config.replace("{token: t}", f"{{token: t, {name}: {value}}}") if section else config + f"{name}: {value}\n"
    with pytest.raises(ConfigError) as raised:
        load_settings(write(tmp_path, in_file), environ={})
    assert str(raised.value).startswith(f"{tmp_path / 'config.yaml'}: {key}: {error}")


def test_secrets_come_from_the_environment_and_paths_from_the_file(tmp_path):
    path = write(tmp_path, "data_dir: store\nmoysklad:\n  token: from-file\nfeeds:\n  - name: main\n")
    settings = load_settings(path, environ={"MOYSKLAD_TOKEN": "from-env", "MOYSKLAD_LOGIN": "a@b"})
    assert settings.moysklad.token == "from-env"
    assert settings.moysklad.auth_kind == "bearer"
    assert settings.data_dir == tmp_path / "store"
    assert settings.feeds[0].source == "moysklad"
    assert settings.moysklad.base_url == "https://api.moysklad.ru/api/remap/1.2"


def test_login_and_password_are_enough(tmp_path):
    path = write(tmp_path, "moysklad:\n  login: admin@shop\n")
    settings = load_settings(path, environ={"MOYSKLAD_PASSWORD": "hunter2-pass"})
    assert settings.moysklad.auth_kind == "basic"
    assert redacted(settings)["moysklad"]["password"] == "***"
    assert "hunter2-pass" not in repr(redacted(settings))


@pytest.mark.parametrize("written", ["0123", "12:30", "0x1F", "1_000", "007"])
def test_an_unquoted_secret_that_yaml_reads_as_a_number_is_taken_as_written(tmp_path, written):
    """YAML 1.1 reads 0123 as 83 and 12:30 as 750: a password written so must still be the one 1C sends."""
    settings = load_settings(write(tmp_path, f"exchange:\n  login: 1c\n  password: {written}\n"), environ={})
    assert settings.exchange.password == written


@pytest.mark.parametrize(
    "text, key, problem",
    [
        ("moysklad: {}\nfeeds: [{name: main}]\n", "moysklad", "no credentials, needed by feed main (source: moysklad)"),
        ("feeds: [{name: a}, {name: b, source: exchange}, {name: c}]\n", "moysklad", "needed by feeds a, c"),
        ("moysklad: {token: t, page_sise: 10}\n", "moysklad.page_sise", "unknown key"),
        # a key an earlier release took, in a config carried over from it: what to write now, not just "unknown key"
        ("moysklad: {token: t, sync_interval_minutes: 15}\n", "moysklad.sync_interval_minutes",
         "no longer a setting: MoySklad is synced before each build of a feed; remove it and set the feeds' "
         "interval_minutes (or cron)"),
        ("moysklad: {token: t, max_in_flight: 9}\n", "moysklad.max_in_flight", "at most 5"),
        ("moysklad: {token: t, read_timeout: soon}\n", "moysklad.read_timeout", "must be a number"),
        ("moysklad: {token: t}\nfeeds: [{name: main, source: 1c}]\n", "feeds[0].source", "must be one of"),
        ("moysklad: {token: t}\nfeeds: [{name: a}, {name: a}]\n", "feeds[1].name", "used by another feed"),
        ("moysklad: {token: t}\nfeeds: [{source: moysklad}]\n", "feeds[0].name", "required"),
        ("moysklad: {token: t}\nfeeds: [{name: 'Main Feed'}]\n", "feeds[0].name", "lowercase"),
        ("moysklad: {token: t, base_url: api.moysklad.ru}\n", "moysklad.base_url", "http"),
        ("moysklad: {token: t, base_url: 'https://online.moysklad.ru/api/remap/1.2'}\n", "moysklad.base_url",
         "online.moysklad.ru refuses JSON API 1.2 since 2023-12-01; use https://api.moysklad.ru/api/remap/1.2"),
        ("- just\n- a list\n", "top level", "mapping"),
        ("moysklad: [token]\n", "moysklad", "mapping"),
        ("exchange: {login: 1c, password: yes}\n", "exchange.password", "YAML reads this as true, not as text"),
    ],
)
def test_config_errors_name_the_key_and_the_problem(tmp_path, text, key, problem):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_settings(path, environ={})
    assert str(error.value).startswith(f"{path}: ")
    assert key in str(error.value)
    assert problem in str(error.value)
    assert "\n" not in str(error.value)  # one line


@pytest.mark.parametrize("schedule, key, problem", [
    ("cron: '0 6 31 2 *'", "feeds[0].cron", "never comes"),  # the 31st of February: only the start-up build
    ("cron: '0 6 30 2 1-5'", None, None),  # the 30th of February or a weekday: runs on weekdays
    ("interval_minutes: .inf", "feeds[0].interval_minutes", "must be a finite number"),
    ("interval_minutes: .nan", "feeds[0].interval_minutes", "must be a finite number"),
    ("interval_minutes: 1.0e+12", "feeds[0].interval_minutes", "at most 525600"),
])
def test_a_schedule_that_cannot_run_is_a_config_error_naming_its_key(tmp_path, schedule, key, problem):
    """Such values passed the check, then crashed every gunicorn worker at boot (a traceback, "Worker failed to
    boot") or left the feed built once at start-up and never again, with nothing said."""
    path = write(tmp_path, f"moysklad: {{token: t}}\nfeeds:\n  - name: main\n    {schedule}\n")
    if key is None:
        assert load_settings(path, environ={}).feeds[0].cron
        return
    with pytest.raises(ConfigError) as error:
        load_settings(path, environ={})
    assert str(error.value).startswith(f"{path}: {key}: ") and problem in str(error.value), error.value
    assert "\n" not in str(error.value)


def test_broken_yaml_is_reported_with_the_file_and_the_line(tmp_path):
    path = write(tmp_path, "log_level: INFO\nmoysklad:\n  token: t\n   base_url: x\n")
    with pytest.raises(ConfigError) as error:
        load_settings(path, environ={})
    assert str(error.value).startswith(f"{path}, line 4, column 12: not valid YAML: ")
    assert "\n" not in str(error.value)


def test_a_data_dir_that_cannot_be_created_or_written_is_a_config_error(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    settings = load_settings(write(tmp_path, "data_dir: a-file/data\n"), environ={})
    with pytest.raises(ConfigError) as error:
        prepare_data_dirs(settings)
    assert str(error.value).startswith(f"data_dir: {tmp_path / 'a-file' / 'data'} cannot be created by this user")
    assert "SKLADBRIDGE_DATA_DIR" in str(error.value)

    read_only = tmp_path / "read-only"
    read_only.mkdir(mode=0o500)
    if os.geteuid() == 0:  # root writes through modes: take a folder the kernel keeps read-only instead
        read_only = Path("/sys")
        try:
            tempfile.TemporaryFile(dir=read_only).close()
            pytest.skip("no folder here is read-only for root")
        except OSError:
            pass
    settings = load_settings(write(tmp_path, f"data_dir: {read_only}\n"), environ={})
    with pytest.raises(ConfigError, match=rf"^data_dir: {re.escape(str(read_only))} cannot be written by this user"):
        prepare_data_dirs(settings)


def documented_keys(text: str) -> set[str]:
    """Dotted keys of config.example.yaml, including commented-out blocks like ``# emulator:``."""
    keys, stack = set(), []  # stack of (indent, dotted path) of the enclosing mappings
    for line in text.splitlines():
        if re.match(r"^\s*#", line):
            line = line.replace("# ", "", 1)
        match = re.match(r"^(\s*)(- )?([a-z_]+):(\s|$)", line)
        if not match:
            continue
        indent = len(match.group(1)) + (2 if match.group(2) else 0)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1] if stack else ""
        if match.group(2):  # a list item opens a mapping of its own
            parent += "[]"
            stack.append((indent - 1, parent))
        key = f"{parent}.{match.group(3)}" if parent else match.group(3)
        keys.add(key)
        stack.append((indent, key))
    return keys


# Keys whose value maps codes the user chooses (retailCRM warehouses, price types): the example's entries are not keys.
USER_CODE_MAPPINGS = ("feeds[].retailcrm.stores", "feeds[].retailcrm.prices")


def test_the_example_config_documents_every_key_and_nothing_else():
    text = (ROOT / "config.example.yaml").read_text(encoding="utf-8")
    documented = {key for key in documented_keys(text) if not key.startswith(tuple(m + "." for m in USER_CODE_MAPPINGS))}
    assert documented == setting_keys()


def test_the_example_config_loads_once_it_has_credentials(tmp_path):
    text = (ROOT / "config.example.yaml").read_text(encoding="utf-8")
    raw = yaml.safe_load(text)
    assert raw["moysklad"].get("emulator") is None  # copying the example never runs the demo
    path = write(tmp_path, text)
    settings = load_settings(path, environ={"MOYSKLAD_TOKEN": "t"})
    assert not settings.is_demo
    assert settings.feeds[0].name == "main"


RETAILCRM_CONTRACT = """moysklad: {token: t}
feeds:
  - name: main
    source: moysklad
    retailcrm:
      url: https://shop.retailcrm.ru     # account URL
      api_key: ""                         # env RETAILCRM_API_KEY (RETAILCRM_API_KEY_<FEED> per feed)
      site: shop-code                     # the retailCRM shop this feed is loaded into
      stores:                             # retailCRM warehouse code: MoySklad warehouses summed into it
        main: all                         #   "all" or a list of MoySklad warehouse names
        spb: [Склад Питер]
      prices:                             # retailCRM price type code: MoySklad price type name
        wholesale: Оптовая цена
  - name: second-shop
    retailcrm: {url: https://other.retailcrm.ru, site: other, prices: {base: Цена продажи}}
  - name: plain
"""


def test_the_retailcrm_section_of_the_issue_loads_with_keys_from_the_environment(tmp_path):
    settings = load_settings(write(tmp_path, RETAILCRM_CONTRACT),
                             environ={"RETAILCRM_API_KEY": "all-feeds-key", "RETAILCRM_API_KEY_SECOND_SHOP": "own-key"})
    main, second, plain = settings.feeds
    crm = main.retailcrm
    assert (crm.url, crm.site, crm.api_key) == ("https://shop.retailcrm.ru", "shop-code", "all-feeds-key")
    assert [(t.code, t.warehouses) for t in crm.stores] == [("main", ()), ("spb", ("Склад Питер",))]
    assert [(t.code, t.price_type) for t in crm.prices] == [("wholesale", "Оптовая цена")]
    assert second.retailcrm.api_key == "own-key" and second.retailcrm.stores == ()
    assert plain.retailcrm is None  # without the section nothing changes
    shown = redacted(settings)
    assert shown["feeds"][0]["retailcrm"]["api_key"] == "***" and "all-feeds-key" not in repr(shown)
    assert "own-key" not in repr(shown)


@pytest.mark.parametrize("section, key, problem", [
    ("{url: https://s.retailcrm.ru, site: s, stores: {main: all}}", "feeds[0].retailcrm.api_key", "RETAILCRM_API_KEY_MAIN"),
    ("{url: s.retailcrm.ru, api_key: k, site: s, stores: {main: all}}", "feeds[0].retailcrm.url", "account address"),
    ("{url: https://s.retailcrm.ru, api_key: k, stores: {main: all}}", "feeds[0].retailcrm.site", "shop"),
    ("{url: https://s.retailcrm.ru, api_key: k, site: s}", "feeds[0].retailcrm", "at least one"),
    ("{url: https://s.retailcrm.ru, api_key: k, site: s, stores: {main: everything}}", "feeds[0].retailcrm.stores.main",
     '"all" or a list'),
    ("{url: https://s.retailcrm.ru, api_key: k, site: s, stores: {main: []}}", "feeds[0].retailcrm.stores.main",
     '"all" or a list'),
    ("{url: https://s.retailcrm.ru, api_key: k, site: s, stores: [main]}", "feeds[0].retailcrm.stores", "mapping"),
    ("{url: https://s.retailcrm.ru, api_key: k, site: s, prices: {wholesale: [a]}}", "feeds[0].retailcrm.prices.wholesale",
     "name of a price type"),
    ("{url: https://s.retailcrm.ru, api_key: k, site: s, stores: {main: all}, key: x}", "feeds[0].retailcrm.key",
     "unknown key"),
])
def test_retailcrm_section_errors_name_the_key_and_the_problem(tmp_path, section, key, problem):
    with pytest.raises(ConfigError) as error:
        load_settings(write(tmp_path, f"moysklad: {{token: t}}\nfeeds:\n  - name: main\n    retailcrm: {section}\n"),
                      environ={})
    assert key in str(error.value)
    assert problem in str(error.value)
