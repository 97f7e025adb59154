"""Log lines as operators and log shippers want them: text or JSON, with secrets scrubbed, each made
during an account's work naming that account (``account=client-b``; ``account=main`` for the main one).

Secrets are never passed to a logger on purpose; the scrubber is the safety net for the day an
exception text or a URL carries one anyway (a MoySklad error echoing a header, say).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections.abc import Callable
from urllib.parse import unquote

from core.account_context import current_account
from core.settings import MAIN_ACCOUNT_LABEL, Settings, secret_values

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(account_field)s: %(message)s"
# Secrets that travel in URLs: the exchange session id, feed tokens, the webhook secret.
URL_SECRETS = (
    (re.compile(r"(sessid=)[^&\s\"]+"), r"\1***"),
    (re.compile(r"(/feeds/)[^/\s\"?]+(/[^/\s\"?]+\.xml)"), r"\1***\2"),
    (re.compile(r"(/webhooks/moysklad/)[^/\s\"?]+"), r"\1***"),
)


def scrub(text: str, secrets: tuple[str, ...] = ()) -> str:
    """The text with URL secrets and the configured secret values replaced by ***. A path is matched as the router reads
    it: /feeds/<token>%2Fmain.xml or …/main%2Exml reach the feed too, so they are decoded first."""
    if "%" in text:
        text = unquote(text)
    for pattern, replacement in URL_SECRETS:
        text = pattern.sub(replacement, text)
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _with_account(make_record: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    """A record factory that also stamps each record with the account whose work made it ('' when none)."""

    def make(*args, **kwargs) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        account = current_account()
        record.account = MAIN_ACCOUNT_LABEL if account == "" else account or ""
        return record

    make.skladbridge = True
    return make


class ScrubbingFormatter(logging.Formatter):
    """Text lines, secrets scrubbed."""

    def __init__(self, secrets: tuple[str, ...] = (), fmt: str = TEXT_FORMAT):
        super().__init__(fmt)
        self.secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        account = getattr(record, "account", "")
        record.account_field = f" account={account}" if account else ""
        return scrub(super().format(record), self.secrets)


class JsonFormatter(ScrubbingFormatter):
    """One JSON object per line: time, level, logger, message (and the traceback, when there is one)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        if getattr(record, "account", ""):
            entry["account"] = record.account
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return scrub(json.dumps(entry, ensure_ascii=False), tuple(json.dumps(s)[1:-1] for s in self.secrets))


def configure_logging(settings: Settings) -> None:
    """Root logging for the service (stderr): the configured level and format, secrets scrubbed."""
    formatter_class = JsonFormatter if settings.log_format == "json" else ScrubbingFormatter
    handler = logging.StreamHandler()
    handler.setFormatter(formatter_class(secret_values(settings)))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "skladbridge", False)]:
        root.removeHandler(old)
    handler.skladbridge = True
    root.addHandler(handler)
    if not getattr(logging.getLogRecordFactory(), "skladbridge", False):
        logging.setLogRecordFactory(_with_account(logging.getLogRecordFactory()))
    root.setLevel(settings.log_level.upper())
