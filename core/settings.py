"""Configuration: a YAML file plus environment variables for secrets.

The file is the one named by ``SKLADBRIDGE_CONFIG`` (default ``./config.yaml``). Without any file
the service runs the demo (the bundled MoySklad emulator with a generated catalog, in a data
folder of its own), unless MoySklad credentials or an address are in the environment: those name
a real account, served with one feed ``main``. Every key is declared once, in the dataclasses
below; ``config.example.yaml`` documents each of them and a test keeps the two in step.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import math
import os
import re
import tempfile
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from core.build_pool import default_pool_size
from core.cron import crontab_trigger
from core.mailbox import Mailbox

DEFAULT_CONFIG_PATH = "config.yaml"
DEFAULT_MOYSKLAD_URL = "https://api.moysklad.ru/api/remap/1.2"
# The old host answers JSON API 1.2 no more since 2023-12-01 (DOMAIN.md, MoySklad API section).
RETIRED_MOYSKLAD_HOST = "online.moysklad.ru"
FEED_SOURCES = ("moysklad", "exchange")
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# A secret that is a path segment of a URL (a feed's token, a webhook secret): what a route's <secret> matches
# and a shard's nginx map too; `openssl rand -hex 24` makes one.
URL_SECRET = re.compile(r"[A-Za-z0-9_-]{16,128}")

# Environment variables that override config keys (secrets belong here, not in the file).
ENVIRONMENT = {
    "SKLADBRIDGE_DATA_DIR": ("data_dir",),
    "MOYSKLAD_BASE_URL": ("moysklad", "base_url"),
    "MOYSKLAD_TOKEN": ("moysklad", "token"),
    "MOYSKLAD_LOGIN": ("moysklad", "login"),
    "MOYSKLAD_PASSWORD": ("moysklad", "password"),
    "SKLADBRIDGE_PUBLIC_URL": ("public_url",),
    "SKLADBRIDGE_WEBHOOK_SECRET": ("webhooks", "secret"),
    "EXCHANGE_LOGIN": ("exchange", "login"),
    "EXCHANGE_PASSWORD": ("exchange", "password"),
    "SKLADBRIDGE_API_KEY": ("api", "key"),
    "SKLADBRIDGE_ADMIN_LOGIN": ("admin", "login"),
    "SKLADBRIDGE_LOG_FORMAT": ("log_format",),
    "SKLADBRIDGE_PROXY_HOPS": ("proxy_hops",),
    "SKLADBRIDGE_ACCEL_REDIRECT": ("accel_redirect",),
    "SKLADBRIDGE_ADMIN_PASSWORD": ("admin", "password"),
}
MAIN_ACCOUNT_LABEL = "main"  # how the pages and the metrics name the main account (accounts[] take other names)
# The same for each of accounts[]: the variable name ends with the account's name, e.g. MOYSKLAD_TOKEN_SHOP_2.
ACCOUNT_ENVIRONMENT = {
    "MOYSKLAD_TOKEN_": ("moysklad", "token"),
    "MOYSKLAD_LOGIN_": ("moysklad", "login"),
    "MOYSKLAD_PASSWORD_": ("moysklad", "password"),
    "SKLADBRIDGE_WEBHOOK_SECRET_": ("webhook_secret",),
}
PURCHASE_PRICE_RULES = ("cost", "buyPrice", "none")
QUANTITY_RULES = ("free", "stock", "quantity")
PICTURE_RULES = ("cache", "permanent", "none")
# What type=sale&mode=query answers: CommerceML 2.05 in windows-1251 (1C 8.3), 2.05 in UTF-8 with a
# BOM, or 3.1 (UTF-8 with a BOM, each order in a <Контейнер>, for the 1C-Bitrix module >= 6.5).
ORDER_FORMATS = ("2.05-cp1251", "2.05-utf8", "3.1")
# Keys whose values redacted() hides.
SECRET_NAMES = ("token", "password", "secret", "key", "webhook_secret", "api_key")
# The retailCRM API key of every feed that pushes to retailCRM; RETAILCRM_API_KEY_<FEED> (the feed's
# name upper-cased, '-' as '_') wins over it for one feed.
RETAILCRM_KEY_VARIABLE = "RETAILCRM_API_KEY"
ALL_WAREHOUSES = "all"
MAX_CONCURRENT_BUILDS = 64
MAX_INTERVAL_MINUTES = 525600  # a year: longer is a typo, and far longer overflowed the scheduler's dates at boot


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the key and what is wrong."""


@dataclass(frozen=True)
class EmulatorSettings:
    """Runs the bundled MoySklad emulator on loopback instead of the real API (the demo)."""

    products: int = 300
    seed: int = 42
    latency_ms: int = 0


@dataclass(frozen=True)
class MoySkladSettings:
    """How to reach the MoySklad JSON API 1.2 and how politely to use it."""

    base_url: str = DEFAULT_MOYSKLAD_URL
    token: str = ""
    login: str = ""
    password: str = ""
    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    max_in_flight: int = 4
    max_retries: int = 5
    retry_base_delay: float = 1.0
    retry_max_delay: float = 60.0
    page_size: int = 1000
    overlap_minutes: int = 10
    full_sync_hours: int = 24
    stock_report_hours: int = 24
    emulator: EmulatorSettings | None = None

    @property
    def auth_kind(self) -> str:
        return "bearer" if self.token else "basic"


# Keys an earlier release took and this one does not, with what to write now: a config carried over from that
# release names them so, not as a mere "unknown key".
RETIRED_KEYS: dict[type, dict[str, str]] = {
    MoySkladSettings: {"sync_interval_minutes": "MoySklad is synced before each build of a feed; remove it and set "
                                                "the feeds' interval_minutes (or cron)"},
}


@dataclass(frozen=True)
class ParamMapping:
    """A custom attribute published as ``<param name=… code=…>``."""

    attribute: str
    code: str = ""
    name: str = ""


@dataclass(frozen=True)
class StoreTarget:
    """A retailCRM warehouse (by code) and the source's warehouses whose stock is summed into it."""

    code: str
    warehouses: tuple[str, ...] = ()  # names; empty = every warehouse ("all")


@dataclass(frozen=True)
class PriceTarget:
    """A retailCRM price type (by code) and the source's price type (by name) that fills it."""

    code: str
    price_type: str


def _store_targets(value, key: str) -> tuple[StoreTarget, ...]:
    """``{code: "all" | [warehouse name, ...]}`` as written in the config."""
    targets = []
    for code, warehouses in _code_mapping(value, key):
        if warehouses == ALL_WAREHOUSES:
            targets.append(StoreTarget(code))
        elif (isinstance(warehouses, list) and warehouses
              and all(isinstance(name, str) and name.strip() for name in warehouses)):
            targets.append(StoreTarget(code, tuple(warehouses)))
        else:
            raise ConfigError(f"{key}.{code}: must be \"{ALL_WAREHOUSES}\" or a list of warehouse names, "
                              f"got {warehouses!r}")
    return tuple(targets)


def _price_targets(value, key: str) -> tuple[PriceTarget, ...]:
    """``{code: price type name}`` as written in the config."""
    targets = []
    for code, name in _code_mapping(value, key):
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{key}.{code}: must be the name of a price type, got {name!r}")
        targets.append(PriceTarget(code, name))
    return tuple(targets)


def _code_mapping(value, key: str) -> list[tuple[str, object]]:
    if value is None:
        return []
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: must be a mapping of retailCRM codes, got {type(value).__name__}")
    for code in value:
        if not isinstance(code, str) or not code.strip():
            raise ConfigError(f"{key}: {code!r} is not a retailCRM code")
    return list(value.items())


@dataclass(frozen=True)
class RetailCrmSettings:
    """Where a feed's stock and prices are pushed through retailCRM's API v5, and what goes where."""

    url: str = ""
    api_key: str = ""
    site: str = ""
    stores: tuple[StoreTarget, ...] = field(default=(), metadata={"convert": _store_targets})
    prices: tuple[PriceTarget, ...] = field(default=(), metadata={"convert": _price_targets})


@dataclass(frozen=True)
class FeedSettings:
    """One published ICML catalog file and the rules that turn the store into it."""

    name: str
    source: str = "moysklad"
    token: str = ""
    shop_name: str = ""
    company: str = ""
    price_type: str = ""
    purchase_price: str = "cost"
    quantity: str = "free"
    stores: tuple[str, ...] = ()
    uncategorized: str = "Без категории"
    include_bundles: bool = True
    inactive_days: int = 30
    xml_id: str = "{externalCode}"
    url: str = ""
    vendor_attribute: str = ""
    params: tuple[ParamMapping, ...] = ()
    dimension_attributes: tuple[str, ...] = ()
    pictures: str = "cache"
    min_ratio: float = 0.7
    interval_minutes: float = 60
    cron: str = ""
    retailcrm: RetailCrmSettings | None = None


@dataclass(frozen=True)
class WebhookSettings:
    """MoySklad webhooks that trigger a debounced rebuild of the moysklad feeds."""

    secret: str = ""
    debounce_seconds: int = 30


@dataclass(frozen=True)
class ExchangeSettings:
    """The CommerceML endpoint 1C and MoySklad push the catalog to; off while no password is set."""

    login: str = ""
    password: str = ""
    zip: bool = True
    file_limit: int = 100 * 1024 * 1024
    max_session_bytes: int = 2 * 1024 * 1024 * 1024  # what lands on disk: uploads and what archives unpack to
    max_session_files: int = 100_000  # files a session creates (uploads and archive entries): a bound on inodes
    session_minutes: int = 60
    orders_format: str = "2.05-cp1251"
    orders_per_query: int = 500


@dataclass(frozen=True)
class AdminSettings:
    """Who may see the health page and start builds; open to anyone while no password is set."""

    login: str = "admin"
    password: str = ""
    healthz_public: bool = True  # /healthz for an uptime monitor: states and reasons only
    metrics_public: bool = False  # /metrics names feeds and counts; Prometheus can send the login


@dataclass(frozen=True)
class ApiSettings:
    """The JSON orders API (``/api/orders``); off while no key is set."""

    key: str = ""
    max_body_bytes: int = 1024 * 1024


@dataclass(frozen=True)
class AccountSettings:
    """Another MoySklad account (another client of the integrator) served by the same instance.

    Its store, feeds, pictures and webhook notes live in ``<data_dir>/accounts/<name>/``; its builds
    take their turn in the instance's one build pool, so a failing or slow client never holds up
    the others.
    """

    name: str = ""
    moysklad: MoySkladSettings = field(default_factory=MoySkladSettings)
    feeds: tuple[FeedSettings, ...] = ()
    webhook_secret: str = ""  # its MoySklad webhooks call <public_url>/webhooks/moysklad/<secret>


@dataclass(frozen=True)
class Settings:
    """The whole configuration of one skladbridge instance."""

    data_dir: Path = Path("data")
    log_level: str = "INFO"
    log_format: str = "text"  # or "json": one object per line, for log shippers
    proxy_hops: int = 0  # reverse proxies in front (nginx: 1) whose X-Forwarded-For/-Proto to trust
    accel_redirect: str = ""  # an internal nginx location mapped to data_dir: nginx then sends the feed files
    max_feed_downloads: int = 6  # feed downloads one process sends at once; keep it below gunicorn's threads
    max_concurrent_builds: int = 0  # builds (of all accounts) at once; 0 = a few per core (build_pool_size)
    public_url: str = "http://127.0.0.1:8080"
    moysklad: MoySkladSettings = field(default_factory=MoySkladSettings)
    feeds: tuple[FeedSettings, ...] = ()
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    exchange: ExchangeSettings = field(default_factory=ExchangeSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    accounts: tuple[AccountSettings, ...] = ()
    source_path: Path | None = None  # the file it was read from; None for the demo or the environment alone

    @property
    def account(self) -> str:
        """The account these settings are the view of: '' for the main one (top-level moysklad and feeds)."""
        return ""

    @property
    def store_path(self) -> Path:
        return self.data_dir / "catalog.sqlite"

    @property
    def instance_dir(self) -> Path:
        """The data directory of the whole instance (an account's own folder lies inside it)."""
        return self.data_dir

    @property
    def build_pool_size(self) -> int:
        """How many builds the instance runs at once: the setting, or the default for this machine's cores."""
        return self.max_concurrent_builds or default_pool_size()

    @property
    def mailbox(self) -> Mailbox:
        """Where any process asks the instance's scheduler for work."""
        return Mailbox(self.instance_dir)

    @property
    def feeds_dir(self) -> Path:
        return self.data_dir / "feeds"

    @property
    def accounts_dir(self) -> Path:
        """Where each account but the main one keeps its folder (store, feeds, pictures), named as the account."""
        return self.instance_dir / "accounts"

    @property
    def images_dir(self) -> Path:
        """Cached MoySklad pictures and the pictures 1C sends through the exchange."""
        return self.data_dir / "images"

    @property
    def moysklad_feeds(self) -> tuple[FeedSettings, ...]:
        """The feeds that publish the MoySklad catalog (a webhook or a sync makes them stale)."""
        return tuple(feed for feed in self.feeds if feed.source == "moysklad")

    @property
    def images_url(self) -> str:
        """Where the feed's cached pictures are fetched from."""
        return self.public_url.rstrip("/") + "/images" + (f"/{self.account}" if self.account else "")

    def every_account(self) -> list[Settings]:
        """The main account and a view of each other account: the same instance settings with that
        account's MoySklad, feeds, webhook secret and data directory (exchange and orders stay main)."""
        views: list[Settings] = [self]
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(Settings)}
        for account in self.accounts:
            views.append(AccountView(**{
                **shared, "data_dir": self.accounts_dir / account.name, "moysklad": account.moysklad,
                "feeds": account.feeds, "webhooks": dataclasses.replace(self.webhooks, secret=account.webhook_secret),
                "exchange": dataclasses.replace(self.exchange, password=""), "api": ApiSettings(), "accounts": (),
                "account_name": account.name, "main_data_dir": self.data_dir}))
        return views

    def account_named(self, name: str) -> Settings | None:
        """The account a person names (``--account``): one of accounts[], or the main one by its page name ``main``
        or by no name at all; None when none is so named."""
        wanted = "" if name == MAIN_ACCOUNT_LABEL else name
        return next((view for view in self.every_account() if view.account == wanted), None)

    def every_feed(self) -> Iterator[tuple[Settings, FeedSettings]]:
        """Every feed of every account, with its account's settings."""
        return ((view, feed) for view in self.every_account() for feed in view.feeds)

    def find_feed(self, name: str) -> tuple[Settings, FeedSettings] | None:
        """A feed of any account, with its account's settings."""
        return next(((view, feed) for view, feed in self.every_feed() if feed.name == name), None)

    @property
    def exchange_dir(self) -> Path:
        """Exchange sessions' state and uploads, one folder per session."""
        return self.data_dir / "exchange"

    @property
    def exchange_log_path(self) -> Path:
        """Exchange sessions are logged apart from the catalog, so a login never waits for a catalog write."""
        return self.data_dir / "exchange.sqlite"

    @property
    def is_demo(self) -> bool:
        return self.moysklad.emulator is not None

    @property
    def demo_notice(self) -> str:
        """What the demo says about itself in the log and on the command line: it is nobody's account."""
        return (f"DEMO: no config file, so this is the demo: a generated catalog from the bundled MoySklad emulator, "
                f"kept in {self.data_dir}, not your account. To use yours: cp config.example.yaml config.yaml and "
                "set MOYSKLAD_TOKEN")


@dataclass(frozen=True)
class AccountView(Settings):
    """The settings as one non-main account sees them (see :meth:`Settings.every_account`)."""

    account_name: str = ""
    main_data_dir: Path = Path("data")

    @property
    def account(self) -> str:
        return self.account_name

    @property
    def instance_dir(self) -> Path:
        return self.main_data_dir


DEMO = {
    "moysklad": {"emulator": {}},
    "feeds": [{"name": "demo", "source": "moysklad"}],
}
# The demo's store, feeds and pictures live in a folder of their own (inside SKLADBRIDGE_DATA_DIR when
# set), never in the ./data a copied config.example.yaml uses: its generated goods must not become
# a real account's feed.
DEMO_DATA_DIR = "demo-data"
# Any of these without a config file names a real account: the service serves it, never the demo.
ACCOUNT_VARIABLES = ("MOYSKLAD_TOKEN", "MOYSKLAD_LOGIN", "MOYSKLAD_PASSWORD", "MOYSKLAD_BASE_URL")
# What a real account gets when only the environment configures it: one feed, as in config.example.yaml.
ENVIRONMENT_ONLY = {"feeds": [{"name": "main", "source": "moysklad"}]}


# The configuration the gunicorn master read and checked (gunicorn.conf.py), held for the workers it forks.
_CHECKED_BY_MASTER: list[Settings] = []


def serve_in_workers(settings: Settings) -> None:
    """In the gunicorn master: the workers it forks from now on serve this checked configuration, so a reload
    whose edited file does not load starts its workers on the last good one instead of taking the service down."""
    _CHECKED_BY_MASTER[:] = [settings]


def settings_for_worker() -> Settings | None:
    """In a gunicorn worker, the configuration its master checked; None elsewhere (read the file then)."""
    return _CHECKED_BY_MASTER[0] if _CHECKED_BY_MASTER else None


def load_settings(path: str | os.PathLike | None = None, environ: typing.Mapping[str, str] | None = None) -> Settings:
    """Read the config file (or the demo defaults when there is none) and apply the environment.

    Every :class:`ConfigError` is one line naming the file (and for YAML the line) and the key.
    """
    environ = os.environ if environ is None else environ
    explicit = path is not None or "SKLADBRIDGE_CONFIG" in environ
    config_path = Path(path if path is not None else environ.get("SKLADBRIDGE_CONFIG", DEFAULT_CONFIG_PATH))
    demo = False
    if config_path.exists():
        raw = _read_yaml(config_path)
        base_dir = config_path.resolve().parent
    elif explicit:
        named = "" if path is not None else " (named by SKLADBRIDGE_CONFIG)"
        raise ConfigError(f"config file {config_path} does not exist{named}")
    elif any(environ.get(variable) for variable in ACCOUNT_VARIABLES):
        raw, base_dir, config_path = copy.deepcopy(ENVIRONMENT_ONLY), Path.cwd(), None
    else:
        raw, base_dir, config_path, demo = copy.deepcopy(DEMO), Path.cwd(), None, True

    from_environment = {}  # config key → the variable that set it, to blame a bad value on its real origin
    for variable, key_path in ENVIRONMENT.items():
        if environ.get(variable):
            _set_path(raw, key_path, environ[variable])
            from_environment[".".join(key_path)] = variable
    if demo:
        raw["data_dir"] = os.path.join(raw.get("data_dir") or ".", DEMO_DATA_DIR)
    for index, account in enumerate(raw.get("accounts") or []):
        if isinstance(account, dict) and isinstance(account.get("name"), str):
            for prefix, key_path in ACCOUNT_ENVIRONMENT.items():
                variable = prefix + _variable_suffix(account["name"])
                if environ.get(variable):
                    _set_path(account, key_path, environ[variable])
                    from_environment[f"accounts[{index}].{'.'.join(key_path)}"] = variable
    _set_retailcrm_keys(raw, environ)

    try:
        settings = _build(Settings, raw, "")
        data_dir = settings.data_dir if settings.data_dir.is_absolute() else base_dir / settings.data_dir
        settings = dataclasses.replace(settings, data_dir=data_dir, source_path=config_path)
        _check(settings)
    except ConfigError as exc:
        variable = from_environment.get(str(exc).partition(":")[0])
        origin = (f"environment variable {variable}" if variable else
                  config_path or ("the environment (no config file)" if not demo else None))
        raise ConfigError(f"{origin}: {exc}" if origin else str(exc)) from None
    return settings


class _Number:
    """A YAML number that remembers how it was written: a text key (a password, a login) takes it as written,
    where ``str()`` would turn 0123 into 83 (YAML 1.1 octal) and 12:30 into 750."""

    written: str


class _Int(int, _Number):
    pass


class _Float(float, _Number):
    pass


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader whose numbers keep their text (see :class:`_Number`) and whose booleans are refused for text."""

    def construct_yaml_int(self, node):
        value = _Int(super().construct_yaml_int(node))
        value.written = node.value
        return value

    def construct_yaml_float(self, node):
        value = _Float(super().construct_yaml_float(node))
        value.written = node.value
        return value


_ConfigLoader.add_constructor("tag:yaml.org,2002:int", _ConfigLoader.construct_yaml_int)
_ConfigLoader.add_constructor("tag:yaml.org,2002:float", _ConfigLoader.construct_yaml_float)


def _read_yaml(config_path: Path) -> dict:
    """The parsed file; a YAML mistake is reported with its line and column."""
    try:
        raw = yaml.load(config_path.read_text(encoding="utf-8"), Loader=_ConfigLoader) or {}  # noqa: S506 (safe)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{config_path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(config_path)
        problem = " ".join(str(part) for part in (getattr(exc, "context", None), getattr(exc, "problem", None)) if part)
        raise ConfigError(f"{where}: not valid YAML: {problem or exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{config_path}: cannot be read: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{config_path}: the top level must be a mapping of keys, not {type(raw).__name__}")
    return raw


def prepare_data_dirs(settings: Settings) -> None:
    """Create every account's data directory and make sure this user can write there.

    Run at start-up, so a data_dir that cannot be used is one config error, not a traceback later.
    """
    for view in settings.every_account():
        directory = view.data_dir
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=directory):
                pass
        except OSError as exc:
            key = "data_dir" if not view.account else f"data_dir of account {view.account}"
            reason = exc.strerror or str(exc)
            raise ConfigError(f"{key}: {directory} cannot be {'created' if not directory.is_dir() else 'written'} "
                              f"by this user (uid {os.getuid()}): {reason}; set data_dir (or SKLADBRIDGE_DATA_DIR) "
                              "to a folder the service may write") from None


def _set_retailcrm_keys(raw: dict, environ: typing.Mapping[str, str]) -> None:
    """The retailCRM API key from the environment, for each feed that has a retailcrm section: RETAILCRM_API_KEY_<FEED>,
    else, for the main account's feeds only, RETAILCRM_API_KEY (another account is another client's retailCRM)."""
    lists = [(raw.get("feeds"), True)] + [(a.get("feeds"), False) for a in raw.get("accounts") or [] if isinstance(a, dict)]
    for feeds, main in lists:
        for feed in feeds if isinstance(feeds, list) else ():
            if not (isinstance(feed, dict) and isinstance(feed.get("retailcrm"), dict)):
                continue
            name = feed.get("name") if isinstance(feed.get("name"), str) else ""
            key = next(filter(None, (environ.get(variable) for variable in retailcrm_key_variables(name, main))), None)
            if key:
                feed["retailcrm"]["api_key"] = key


def retailcrm_key_variables(feed: str, main: bool) -> tuple[str, ...]:
    """The environment variables a feed's retailCRM key is read from, the first set one winning; RETAILCRM_API_KEY
    only for a feed of the main account (``main``)."""
    own = f"{RETAILCRM_KEY_VARIABLE}_{_variable_suffix(feed)}"
    return (own, RETAILCRM_KEY_VARIABLE) if main else (own,)


def _check(settings: Settings) -> None:
    """Rules that span several keys."""
    # Credentials only where a feed reads the MoySklad API: an install fed by 1C needs no token.
    users = ", ".join(feed.name for feed in settings.moysklad_feeds)
    _check_moysklad(settings.moysklad, "moysklad", credentials=bool(users),
                    needed_by=f"feed{'s' if len(settings.moysklad_feeds) > 1 else ''} {users} (source: moysklad)")
    seen: set[str] = set()
    _check_feeds(settings.feeds, "feeds", seen, main=True)
    names, suffixes = set(), {}
    secrets = {settings.webhooks.secret: "webhooks.secret"} if settings.webhooks.secret else {}
    _check_webhook_secret(settings.webhooks.secret, "webhooks.secret", "SKLADBRIDGE_WEBHOOK_SECRET", {})
    for index, account in enumerate(settings.accounts):
        where = f"accounts[{index}]"
        if not NAME_PATTERN.match(account.name):
            raise ConfigError(f"{where}.name: {account.name!r} must be lowercase letters, digits, '-' or '_' "
                              "(it names the account's data folder and picture URLs)")
        if account.name in names:
            raise ConfigError(f"{where}.name: {account.name!r} is used by another account")
        if account.name == MAIN_ACCOUNT_LABEL:
            raise ConfigError(f"{where}.name: {account.name!r} names the main account (the top-level moysklad and "
                              "feeds) on the pages and in the metrics: choose another name")
        names.add(account.name)
        suffix = _variable_suffix(account.name)
        if suffix in suffixes:  # shop-2 and shop_2 would both read MOYSKLAD_TOKEN_SHOP_2
            raise ConfigError(f"{where}.name: {account.name!r} and {suffixes[suffix]!r} read the same environment "
                              f"variables ({token_variable(account.name)}, …): rename one")
        suffixes[suffix] = account.name
        _check_webhook_secret(account.webhook_secret, f"{where}.webhook_secret",
                              f"SKLADBRIDGE_WEBHOOK_SECRET_{suffix}", secrets)
        if account.moysklad.emulator is not None:
            raise ConfigError(f"{where}.moysklad.emulator: only the main account can run the demo emulator")
        _check_moysklad(account.moysklad, f"{where}.moysklad", credentials=True, needed_by=f"account {account.name}",
                        variables=token_variable(account.name))
        for feed_index, feed in enumerate(account.feeds):
            if feed.source != "moysklad":
                raise ConfigError(f"{where}.feeds[{feed_index}].source: an account's feeds publish its MoySklad "
                                  "catalog (source: moysklad); exchange feeds belong to the main feeds list")
        _check_feeds(account.feeds, f"{where}.feeds", seen, main=False)
    _check_one_user_per_account(settings)
    _check_exchange(settings.exchange)
    _check_api(settings.api)
    if not settings.public_url.startswith(("http://", "https://")):
        raise ConfigError(f"public_url: must be the http(s) address retailCRM reaches this service at, got {settings.public_url!r}")
    if settings.log_format not in ("text", "json"):
        raise ConfigError(f"log_format: must be text or json, got {settings.log_format!r}")
    if settings.accel_redirect and not re.fullmatch(r"/[A-Za-z0-9_./-]*/", settings.accel_redirect):
        raise ConfigError(f"accel_redirect: the internal nginx location, a path that starts and ends with '/' "
                          f"(e.g. /_skladbridge_data/), got {settings.accel_redirect!r}")
    if settings.max_concurrent_builds > MAX_CONCURRENT_BUILDS:
        raise ConfigError(f"max_concurrent_builds: at most {MAX_CONCURRENT_BUILDS} builds at once (0 = a few per core, "
                          f"{default_pool_size()} on this machine), got {settings.max_concurrent_builds}")
    if not 0 <= settings.proxy_hops <= 5:
        raise ConfigError(f"proxy_hops: the number of reverse proxies in front (0 when none, 1 for nginx), got {settings.proxy_hops}")
    if settings.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"log_level: must be DEBUG, INFO, WARNING or ERROR, got {settings.log_level!r}")


def _check_one_user_per_account(settings: Settings) -> None:
    """Two accounts on one MoySklad user (a copied token) would sync at once on one budget of 45 units per 3 s and 5
    parallel requests, which MoySklad counts per user: 429s, and the risk of its ban for too many."""
    users: dict[tuple, str] = {}
    for view in settings.every_account():
        if not view.moysklad_feeds or view.moysklad.emulator is not None:
            continue
        ms, where = view.moysklad, f"accounts.{view.account}.moysklad" if view.account else "moysklad"
        for user in ((ms.base_url, "token", ms.token) if ms.token else None,
                     (ms.base_url, "login", ms.login) if ms.login else None):
            if user is None:
                continue
            if user in users:
                raise ConfigError(f"{where}: the same MoySklad {user[1]} as {users[user]}: each account needs its own "
                                  "MoySklad user (MoySklad counts its limits per user, and both would sync at once)")
            users[user] = where


def _check_webhook_secret(secret: str, key: str, variable: str, taken: dict[str, str]) -> None:
    """A webhook secret is a path segment MoySklad calls (a '/' in it made every webhook a 404) and names one account."""
    if not secret:
        return
    if not URL_SECRET.fullmatch(secret):
        raise ConfigError(f"{key} (or {variable}): use 16-128 letters, digits, '-' or '_' (it is a secret part of the "
                          "webhook URL MoySklad calls), e.g. the output of: openssl rand -hex 24")
    if secret in taken:
        raise ConfigError(f"{key}: the same secret as {taken[secret]}: each account needs its own, or one account's "
                          "webhooks would rebuild another's feeds")
    taken[secret] = key


def _check_moysklad(ms: MoySkladSettings, where: str, credentials: bool, needed_by: str = "",
                    variables: str = "MOYSKLAD_TOKEN") -> None:
    if ms.emulator is None:
        if credentials and not ms.token and not (ms.login and ms.password):
            raise ConfigError(
                f"{where}: no credentials{', needed by ' + needed_by if needed_by else ''}: set {where}.token "
                f"(or {variables}), or {where}.login and {where}.password"
            )
        if not ms.base_url.startswith(("https://", "http://")):
            raise ConfigError(f"{where}.base_url: must be an http(s) URL, got {ms.base_url!r}")
        if urlsplit(ms.base_url).hostname == RETIRED_MOYSKLAD_HOST:
            raise ConfigError(f"{where}.base_url: {RETIRED_MOYSKLAD_HOST} refuses JSON API 1.2 since 2023-12-01; "
                              f"use {DEFAULT_MOYSKLAD_URL}")
    if not 1 <= ms.max_in_flight <= 5:
        raise ConfigError(f"{where}.max_in_flight: MoySklad allows at most 5 parallel requests, got {ms.max_in_flight}")
    if not 1 <= ms.page_size <= 1000:
        raise ConfigError(f"{where}.page_size: must be between 1 and 1000, got {ms.page_size}")
    if ms.stock_report_hours < 0:
        raise ConfigError(f"{where}.stock_report_hours: hours between whole stock reports, 0 = only on full syncs; "
                          f"got {ms.stock_report_hours}")


def _check_feeds(feeds: tuple[FeedSettings, ...], where_list: str, seen: set[str], main: bool) -> None:
    """Each feed's options (of the main account's feeds when ``main``); names are unique across every account (they
    are the feed URLs)."""
    for index, feed in enumerate(feeds):
        where = f"{where_list}[{index}]"
        if not NAME_PATTERN.match(feed.name):
            raise ConfigError(f"{where}.name: {feed.name!r} must be lowercase letters, digits, '-' or '_' (it is part of the feed URL)")
        if feed.name in seen:
            raise ConfigError(f"{where}.name: {feed.name!r} is used by another feed (names are unique across accounts)")
        seen.add(feed.name)
        for key, allowed in (("source", FEED_SOURCES), ("purchase_price", PURCHASE_PRICE_RULES),
                             ("quantity", QUANTITY_RULES), ("pictures", PICTURE_RULES)):
            if getattr(feed, key) not in allowed:
                raise ConfigError(f"{where}.{key}: must be one of {', '.join(allowed)}, got {getattr(feed, key)!r}")
        if feed.token and not URL_SECRET.fullmatch(feed.token):
            raise ConfigError(f"{where}.token: use 16-128 letters, digits, '-' or '_' (it is a secret part of the URL)")
        if not 0 <= feed.min_ratio <= 1:
            raise ConfigError(f"{where}.min_ratio: must be between 0 and 1, got {feed.min_ratio}")
        if feed.dimension_attributes and len(feed.dimension_attributes) != 3:
            raise ConfigError(f"{where}.dimension_attributes: name three attributes (length, width, height in cm)")
        if feed.cron:
            try:
                trigger = crontab_trigger(feed.cron)
            except ValueError as exc:
                raise ConfigError(f"{where}.cron: {feed.cron!r} is not a crontab expression: {exc}") from None
            if trigger.get_next_fire_time(None, dt.datetime.now(dt.timezone.utc)) is None:
                raise ConfigError(f"{where}.cron: {feed.cron!r}: its time never comes (a day the month does not have), "
                                  "so the feed would be built at start-up only")
        elif feed.interval_minutes < 0.01:
            raise ConfigError(f"{where}.interval_minutes: must be at least 0.01 (1 or more in production), or set cron")
        elif feed.interval_minutes > MAX_INTERVAL_MINUTES:
            raise ConfigError(f"{where}.interval_minutes: must be at most {MAX_INTERVAL_MINUTES} (a year), "
                              f"got {feed.interval_minutes:g}")
        for param_index, param in enumerate(feed.params):
            if not param.attribute:
                raise ConfigError(f"{where}.params[{param_index}].attribute: name the MoySklad attribute")
        if feed.retailcrm is not None:
            _check_retailcrm(feed.retailcrm, f"{where}.retailcrm", retailcrm_key_variables(feed.name, main), feed.stores)


def _check_retailcrm(crm: RetailCrmSettings, where: str, key_variables: tuple[str, ...], counted: tuple[str, ...]) -> None:
    """A retailcrm section must say where to push (account, key, shop) and at least one thing to push, from the
    warehouses the feed counts (``counted``: its stores; none = all)."""
    if not crm.url.startswith(("https://", "http://")):
        raise ConfigError(f"{where}.url: the retailCRM account address, e.g. https://shop.retailcrm.ru, "
                          f"got {crm.url!r}")
    if not crm.api_key:
        raise ConfigError(f"{where}.api_key: set the retailCRM API key ({where}.api_key, or "
                          f"{' or '.join(key_variables)})")
    if not crm.site:
        raise ConfigError(f"{where}.site: name the retailCRM shop (its symbolic code) this feed is loaded into")
    if not crm.stores and not crm.prices:
        raise ConfigError(f"{where}: map at least one retailCRM warehouse (stores) or price type (prices)")
    summed_into: dict[str, str] = {}  # retailCRM adds its warehouses up: a warehouse in two of them counts twice
    for target in crm.stores:
        outside = [name for name in target.warehouses if counted and name not in counted]
        if outside:
            raise ConfigError(f"{where}.stores.{target.code}: warehouse «{outside[0]}» is not among the feed's stores "
                              f"({', '.join(counted)}); retailCRM would show stock the feed leaves out")
        for name in target.warehouses or (ALL_WAREHOUSES,):
            if name in summed_into:
                what = "«all»" if name == ALL_WAREHOUSES else f"«{name}»"
                raise ConfigError(f"{where}.stores.{target.code}: {what} is summed into {summed_into[name]} already; "
                                  "retailCRM adds its warehouses' stock up, so it would count twice")
            summed_into[name] = target.code


def _variable_suffix(account: str) -> str:
    """An account name as environment variables spell it: shop-2 → SHOP_2."""
    return account.upper().replace("-", "_")


def account_key(account: str, key: str) -> str:
    """A config key as messages name it for an account ('' = the main one): ``accounts.<name>.<key>`` for another."""
    return f"accounts.{account}.{key}" if account else key


def token_variable(account: str) -> str:
    """The environment variable that holds an account's MoySklad token ('' = the main account)."""
    return f"MOYSKLAD_TOKEN_{_variable_suffix(account)}" if account else "MOYSKLAD_TOKEN"


def _check_exchange(exchange: ExchangeSettings) -> None:
    """The exchange limits must let 1C send at least one chunk, and a password needs its login."""
    if exchange.password and not exchange.login:
        raise ConfigError("exchange.login: set the login 1C sends with exchange.password (or EXCHANGE_LOGIN)")
    if exchange.file_limit < 1024:
        raise ConfigError(f"exchange.file_limit: must be at least 1024 bytes, got {exchange.file_limit}")
    if exchange.max_session_bytes < exchange.file_limit:
        raise ConfigError(f"exchange.max_session_bytes: must be at least exchange.file_limit ({exchange.file_limit}), "
                          f"got {exchange.max_session_bytes}")
    if exchange.max_session_files < 1:
        raise ConfigError(f"exchange.max_session_files: must be at least 1, got {exchange.max_session_files}")
    if exchange.session_minutes < 1:
        raise ConfigError(f"exchange.session_minutes: must be at least 1, got {exchange.session_minutes}")
    if exchange.orders_format not in ORDER_FORMATS:
        raise ConfigError(f"exchange.orders_format: must be one of {', '.join(ORDER_FORMATS)}, got {exchange.orders_format!r}")
    if exchange.orders_per_query < 1:
        raise ConfigError(f"exchange.orders_per_query: must be at least 1, got {exchange.orders_per_query}")


def _check_api(api: ApiSettings) -> None:
    """A short key could be guessed; a tiny body limit would refuse every order."""
    if api.key and len(api.key) < 16:
        raise ConfigError(f"api.key: use at least 16 characters (a random string, e.g. from `openssl rand -hex 24`), "
                          f"got {len(api.key)}")
    if api.max_body_bytes < 1024:
        raise ConfigError(f"api.max_body_bytes: must be at least 1024, got {api.max_body_bytes}")


def _build(cls, raw, where: str):
    """Turn a parsed YAML mapping into the dataclass ``cls``, naming any key that does not fit."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'}: must be a mapping of keys, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source_path"}
    unknown = sorted(set(raw) - set(fields))
    retired = [name for name in unknown if name in RETIRED_KEYS.get(cls, {})]
    if retired:
        raise ConfigError(f"{_join(where, retired[0])}: no longer a setting: {RETIRED_KEYS[cls][retired[0]]}")
    if unknown:
        raise ConfigError(f"{_join(where, str(unknown[0]))}: unknown key (known keys: {', '.join(fields)})")
    values = {}
    for name, f in fields.items():
        key = _join(where, name)
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{key}: required")
            continue
        convert = f.metadata.get("convert")  # a key whose YAML shape is not its type's (a mapping of codes)
        values[name] = convert(raw[name], key) if convert else _convert(hints[name], raw[name], key)
    return cls(**values)


def _convert(hint, value, key: str):
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _convert(options[0], value, key)
    if origin is tuple:
        item_type = typing.get_args(hint)[0]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: must be a list, got {type(value).__name__}")
        return tuple(_convert(item_type, item, f"{key}[{i}]") for i, item in enumerate(value))
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: must be a path, got {value!r}")
        return Path(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: must be true or false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key}: must be a number, got {value!r}")
        try:
            number = hint(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: must be a number, got {value!r}") from None
        if hint is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{key}: must be a whole number, got {value!r}")
        if not math.isfinite(number):
            raise ConfigError(f"{key}: must be a finite number, got {value!r}")
        if number < 0:
            raise ConfigError(f"{key}: must not be negative, got {value!r}")
        return number
    if hint is str:
        if value is None:
            return ""
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: must be text, got a {type(value).__name__}")
        if isinstance(value, bool):  # yes, no, on, off: YAML reads them as true/false, not as what was written
            raise ConfigError(f"{key}: YAML reads this as {str(value).lower()}, not as text: put the value in quotes")
        return value.written if isinstance(value, _Number) else str(value)
    raise TypeError(f"no conversion for {hint}")  # a programming error, not a user one


def setting_keys(cls=Settings, prefix: str = "") -> set[str]:
    """Every dotted key the configuration accepts; list items are written as ``feeds[].name``."""
    keys = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name == "source_path":
            continue
        key = _join(prefix, f.name)
        hint = hints[f.name]
        inner = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        target = inner[0]
        if cls is AccountSettings and f.name in ("moysklad", "feeds") or "convert" in f.metadata:
            keys.add(key)  # the same keys as the top-level moysklad and feeds; or a mapping of the user's codes
        elif typing.get_origin(hint) is tuple:
            keys.add(key)
            if dataclasses.is_dataclass(typing.get_args(hint)[0]):
                keys |= setting_keys(typing.get_args(hint)[0], key + "[]")
        elif dataclasses.is_dataclass(target):
            keys.add(key)
            keys |= setting_keys(target, key)
        else:
            keys.add(key)
    return keys


def redacted(settings: Settings) -> dict:
    """The settings as plain data with every secret shown as ``***``, for logs and status pages."""
    return _walk(settings, lambda secret: "***")


def secret_values(settings: Settings) -> tuple[str, ...]:
    """Every configured secret, for the log scrubber (values under 4 characters would scrub ordinary words)."""
    found: list[str] = []
    _walk(settings, lambda secret: found.append(secret) or "***")
    return tuple(sorted({secret for secret in found if len(secret) >= 4}, key=len, reverse=True))


def _walk(value, on_secret, name: str = ""):
    """The settings as plain data; each secret value is replaced by what ``on_secret`` returns for it."""
    if dataclasses.is_dataclass(value):
        return {f.name: _walk(getattr(value, f.name), on_secret, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_walk(v, on_secret) for v in value]
    if isinstance(value, Path):
        return str(value)
    if name in SECRET_NAMES and value:
        return on_secret(value)
    return value


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _set_path(raw: dict, key_path: tuple[str, ...], value: str) -> None:
    node = raw
    for part in key_path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[key_path[-1]] = value
