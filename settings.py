"""Configuration: a YAML file plus environment variables for secrets.

The file is the one named by ``SKLADBRIDGE_CONFIG`` (default ``./config.yaml``). Without any file
the service runs the demo: the bundled MoySklad emulator with a generated catalog. Every key is
declared once, in the dataclasses below; ``config.example.yaml`` documents each of them and a
test keeps the two in step.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

DEFAULT_CONFIG_PATH = "config.yaml"
DEFAULT_MOYSKLAD_URL = "https://api.moysklad.ru/api/remap/1.2"
FEED_SOURCES = ("moysklad", "exchange")
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")

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
}
PURCHASE_PRICE_RULES = ("cost", "buyPrice", "none")
QUANTITY_RULES = ("free", "stock", "quantity")
PICTURE_RULES = ("cache", "permanent", "none")


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
    emulator: EmulatorSettings | None = None

    @property
    def auth_kind(self) -> str:
        return "bearer" if self.token else "basic"


@dataclass(frozen=True)
class ParamMapping:
    """A custom attribute published as ``<param name=… code=…>``."""

    attribute: str
    code: str = ""
    name: str = ""


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
    max_session_bytes: int = 2 * 1024 * 1024 * 1024
    session_minutes: int = 60


@dataclass(frozen=True)
class Settings:
    """The whole configuration of one skladbridge instance."""

    data_dir: Path = Path("data")
    log_level: str = "INFO"
    public_url: str = "http://127.0.0.1:8080"
    moysklad: MoySkladSettings = field(default_factory=MoySkladSettings)
    feeds: tuple[FeedSettings, ...] = ()
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    exchange: ExchangeSettings = field(default_factory=ExchangeSettings)
    source_path: Path | None = None  # the file it was read from; None for the demo defaults

    @property
    def store_path(self) -> Path:
        return self.data_dir / "catalog.sqlite"

    @property
    def exchange_log_path(self) -> Path:
        """Exchange sessions are logged apart from the catalog, so a login never waits for a catalog write."""
        return self.data_dir / "exchange.sqlite"

    @property
    def is_demo(self) -> bool:
        return self.moysklad.emulator is not None


DEMO = {
    "moysklad": {"emulator": {}},
    "feeds": [{"name": "demo", "source": "moysklad"}],
}


def load_settings(path: str | os.PathLike | None = None, environ: typing.Mapping[str, str] | None = None) -> Settings:
    """Read the config file (or the demo defaults when there is none) and apply the environment."""
    environ = os.environ if environ is None else environ
    explicit = path is not None or "SKLADBRIDGE_CONFIG" in environ
    config_path = Path(path if path is not None else environ.get("SKLADBRIDGE_CONFIG", DEFAULT_CONFIG_PATH))
    if config_path.exists():
        try:
            raw = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{config_path}: not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{config_path}: the top level must be a mapping of keys, not {type(raw).__name__}")
        base_dir = config_path.resolve().parent
    elif explicit:
        raise ConfigError(f"config file {config_path} does not exist (named by SKLADBRIDGE_CONFIG or --config)")
    else:
        raw, base_dir, config_path = copy.deepcopy(DEMO), Path.cwd(), None

    for variable, key_path in ENVIRONMENT.items():
        if environ.get(variable):
            _set_path(raw, key_path, environ[variable])

    settings = _build(Settings, raw, "")
    data_dir = settings.data_dir if settings.data_dir.is_absolute() else base_dir / settings.data_dir
    settings = dataclasses.replace(settings, data_dir=data_dir, source_path=config_path)
    _check(settings)
    return settings


def _check(settings: Settings) -> None:
    """Rules that span several keys."""
    ms = settings.moysklad
    if ms.emulator is None:
        if not ms.token and not (ms.login and ms.password):
            raise ConfigError(
                "moysklad: no credentials: set moysklad.token (or MOYSKLAD_TOKEN), "
                "or moysklad.login and moysklad.password (or MOYSKLAD_LOGIN / MOYSKLAD_PASSWORD)"
            )
        if not ms.base_url.startswith(("https://", "http://")):
            raise ConfigError(f"moysklad.base_url: must be an http(s) URL, got {ms.base_url!r}")
    if not 1 <= ms.max_in_flight <= 5:
        raise ConfigError(f"moysklad.max_in_flight: MoySklad allows at most 5 parallel requests, got {ms.max_in_flight}")
    if not 1 <= ms.page_size <= 1000:
        raise ConfigError(f"moysklad.page_size: must be between 1 and 1000, got {ms.page_size}")
    seen = set()
    for index, feed in enumerate(settings.feeds):
        where = f"feeds[{index}]"
        if not NAME_PATTERN.match(feed.name):
            raise ConfigError(f"{where}.name: {feed.name!r} must be lowercase letters, digits, '-' or '_' (it is part of the feed URL)")
        if feed.name in seen:
            raise ConfigError(f"{where}.name: {feed.name!r} is used by another feed")
        seen.add(feed.name)
        for key, allowed in (("source", FEED_SOURCES), ("purchase_price", PURCHASE_PRICE_RULES),
                             ("quantity", QUANTITY_RULES), ("pictures", PICTURE_RULES)):
            if getattr(feed, key) not in allowed:
                raise ConfigError(f"{where}.{key}: must be one of {', '.join(allowed)}, got {getattr(feed, key)!r}")
        if feed.token and not re.fullmatch(r"[A-Za-z0-9_-]{16,128}", feed.token):
            raise ConfigError(f"{where}.token: use 16-128 letters, digits, '-' or '_' (it is a secret part of the URL)")
        if not 0 <= feed.min_ratio <= 1:
            raise ConfigError(f"{where}.min_ratio: must be between 0 and 1, got {feed.min_ratio}")
        if feed.dimension_attributes and len(feed.dimension_attributes) != 3:
            raise ConfigError(f"{where}.dimension_attributes: name three attributes (length, width, height in cm)")
        if feed.cron:
            try:
                from scheduler import crontab_trigger  # read as the scheduler reads it (Sunday is 0)

                crontab_trigger(feed.cron)
            except ValueError as exc:
                raise ConfigError(f"{where}.cron: {feed.cron!r} is not a crontab expression: {exc}") from None
        elif feed.interval_minutes < 0.01:
            raise ConfigError(f"{where}.interval_minutes: must be at least 0.01 (1 or more in production), or set cron")
        for param_index, param in enumerate(feed.params):
            if not param.attribute:
                raise ConfigError(f"{where}.params[{param_index}].attribute: name the MoySklad attribute")
    _check_exchange(settings.exchange)
    if not settings.public_url.startswith(("http://", "https://")):
        raise ConfigError(f"public_url: must be the http(s) address retailCRM reaches this service at, got {settings.public_url!r}")
    if settings.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"log_level: must be DEBUG, INFO, WARNING or ERROR, got {settings.log_level!r}")


def _check_exchange(exchange: ExchangeSettings) -> None:
    """The exchange limits must let 1C send at least one chunk, and a password needs its login."""
    if exchange.password and not exchange.login:
        raise ConfigError("exchange.login: set the login 1C sends with exchange.password (or EXCHANGE_LOGIN)")
    if exchange.file_limit < 1024:
        raise ConfigError(f"exchange.file_limit: must be at least 1024 bytes, got {exchange.file_limit}")
    if exchange.max_session_bytes < exchange.file_limit:
        raise ConfigError(f"exchange.max_session_bytes: must be at least exchange.file_limit ({exchange.file_limit}), "
                          f"got {exchange.max_session_bytes}")
    if exchange.session_minutes < 1:
        raise ConfigError(f"exchange.session_minutes: must be at least 1, got {exchange.session_minutes}")


def _build(cls, raw, where: str):
    """Turn a parsed YAML mapping into the dataclass ``cls``, naming any key that does not fit."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'}: must be a mapping of keys, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source_path"}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{_join(where, str(unknown[0]))}: unknown key (known keys: {', '.join(fields)})")
    values = {}
    for name, f in fields.items():
        key = _join(where, name)
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{key}: required")
            continue
        values[name] = _convert(hints[name], raw[name], key)
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
        if number < 0:
            raise ConfigError(f"{key}: must not be negative, got {value!r}")
        return number
    if hint is str:
        if value is None:
            return ""
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: must be text, got a {type(value).__name__}")
        return str(value)
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
        if typing.get_origin(hint) is tuple:
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

    def walk(value, name=""):
        if dataclasses.is_dataclass(value):
            return {f.name: walk(getattr(value, f.name), f.name) for f in dataclasses.fields(value)}
        if isinstance(value, tuple):
            return [walk(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        if name in ("token", "password", "secret") and value:
            return "***"
        return value

    return walk(settings)


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
