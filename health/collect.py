"""What the operator pages show: every feed's freshness, the MoySklad sync, the exchange sessions.

:func:`collect` reads the store and the exchange log once and returns plain data; the health page,
``/health.json``, ``/healthz`` and ``/metrics`` all render that same data, so they never disagree.
Texts for people are in Russian; keys and states are English.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path

from core.cron import crontab_trigger
from core.settings import FeedSettings, Settings, redacted
from feeds.build import feed_source
from feeds.publish import feed_paths
from retailcrm.push import push_source
from store import CatalogStore, ExchangeLog, StoreError, open_catalog

HISTORY_BUILDS = 30
RECENT_SESSIONS = 20
SKIPPED_EXAMPLES = 3
# A feed is stale when its last published build is older than this many schedule intervals.
STALE_INTERVALS = 2

STATE_TEXTS = {
    "fresh": "свежий",
    "stale": "устарел",
    "failing": "ошибка сборки",
    "pending": "ещё не собран",
}


@dataclass(frozen=True)
class Advice:
    """An error in plain words and what to do about it."""

    title: str
    action: str


CREDENTIALS_REJECTED = Advice(
    "МойСклад не принял токен или логин/пароль",
    "Выпустите новый токен в МоёмСкладе (Настройки → Токены) и запишите его в moysklad.token или в "
    "переменную MOYSKLAD_TOKEN, затем перезапустите сервис. Выпуск нового токена отзывает старый.")
# Known failures, matched on the error text the run recorded (first match wins).
ADVICE = (
    (r"rejected the credentials|HTTP 401|\b1056\b", CREDENTIALS_REJECTED),
    (r"lacks the permission|HTTP 403",
     Advice("У пользователя МоегоСклада не хватает прав",
            "Администратор МоегоСклада может выдать права: Настройки → Сотрудники → Права "
            "(нужны просмотр товаров, остатков и себестоимости).")),
    (r"throttled|HTTP 429",
     Advice("МойСклад ограничил частоту запросов",
            "Обычно проходит само: сервис повторит сборку по расписанию. Если повторяется, проверьте, "
            "не использует ли тот же аккаунт другая интеграция.")),
    (r"HTTP 5\d\d|timed out|timeout|Connection|connect|reset|truncated|resolve|unreachable",
     Advice("МойСклад недоступен или ответил ошибкой сервера",
            "Обычно это временно: следующая сборка по расписанию повторит попытку. Если ошибка держится "
            "больше часа, проверьте доступ сервера в интернет и статус МоегоСклада.")),
    (r"active offers, fewer than|guard",
     Advice("Защита остановила публикацию: в новом файле намного меньше активных товаров",
            "Проверьте в МоёмСкладе, не сняли ли товары с продажи по ошибке. Если сокращение настоящее, "
            "соберите фид принудительно: flask --app app feeds build ИМЯ --force.")),
    (r"No space left|Errno 28|disk full|Disk quota|File too large|Errno 27",
     Advice("На диске закончилось место",
            "Освободите место на диске сервера (каталог data_dir); прежний фид продолжает раздаваться.")),
    (r"price type|warehouse|unknown field|template",
     Advice("Ошибка в настройках фида",
            "Исправьте настройку фида, названную в тексте ошибки, в файле конфигурации и перезапустите сервис.")),
    (r"stopped without finishing|interrupted|service was stopping",
     Advice("Сборка прервана: процесс сервиса был остановлен",
            "Ничего из прерванной сборки не сохранено; следующая сборка по расписанию выполнит её заново.")),
    (r"locked|another .* run is in progress|busy",
     Advice("Каталог был занят другой загрузкой",
            "Обычно проходит само; следующая сборка по расписанию повторит попытку.")),
)
DEFAULT_ADVICE = Advice("Сборка завершилась ошибкой",
                        "Подробности — в тексте ошибки ниже и в журнале сервиса. Прежний фид продолжает раздаваться.")


def advice_for(error: str | None) -> Advice | None:
    """The plain-words title and the action for a recorded error text."""
    if not error:
        return None
    for pattern, advice in ADVICE:
        if re.search(pattern, error, re.IGNORECASE):
            return advice
    return DEFAULT_ADVICE


def collect(settings: Settings, now: dt.datetime | None = None, *, reveal_tokens: bool = False) -> dict:
    """Everything the operator pages show, as plain data; ``ok`` is true when every feed is fresh
    and every account's store opens."""
    now = now or dt.datetime.now(dt.timezone.utc)
    problems: list[str] = []
    feeds: list[dict] = []
    accounts: list[dict] = []
    exchange = None
    for view in settings.every_account():
        account = {"name": view.account or "main", "moysklad": None,
                   "store": {"ok": True, "path": str(view.store_path), "size": _size(view.store_path)}}
        accounts.append(account)
        try:
            store = open_catalog(view.store_path)
        except StoreError as exc:
            problems.append(f"каталог{' аккаунта ' + view.account if view.account else ''} не открывается: {exc}")
            account["store"] = {"ok": False, "path": str(view.store_path), "error": str(exc)}
            continue
        with store:
            for source in ("moysklad", "exchange", *(feed_source(feed) for feed in view.feeds),
                           *(push_source(feed) for feed in view.feeds if feed.retailcrm)):
                store.settle_dead_runs(source)
            last_sync = store.last_run("moysklad", "sync") if view.moysklad_feeds else None
            account["moysklad"] = _moysklad(store, view, last_sync) if view.moysklad_feeds else None
            feeds += [_feed(store, view, feed, now, last_sync, reveal_tokens) for feed in view.feeds]
            if view is settings:
                exchange = _exchange(settings, store)
    for feed in feeds:
        if feed["state"] != "fresh":
            problems.append(f"фид {feed['name']}: {feed['state_text']}"
                            + (f" — {feed['error']['title']}" if feed["error"] else ""))
    return {
        "ok": not problems,
        "checked_at": _iso(now),
        "demo": settings.is_demo,
        "problems": problems,
        "store": accounts[0]["store"],
        "feeds": feeds,
        "moysklad": accounts[0]["moysklad"],
        "accounts": accounts,
        "exchange": exchange,
        "settings": redacted(settings),
    }


def _feed(store: CatalogStore, settings: Settings, feed: FeedSettings, now: dt.datetime, last_sync: dict | None,
          reveal_tokens: bool) -> dict:
    """One feed: its state, the published file, the last attempt and its history."""
    source = feed_source(feed)
    history = store.runs_of(source, "build", HISTORY_BUILDS)
    last_ok = next((run for run in history if run["status"] == "ok"), None) or store.last_run(source, "build", "ok")
    last = history[0] if history else None
    interval = schedule_interval_seconds(feed, now)
    error_run = _failed_attempt(last, last_sync, feed)
    age = _age(last_ok["finished_at"], now) if last_ok else None
    if error_run:
        state = "failing"
    elif last_ok is None:
        state = "pending"
    elif age > STALE_INTERVALS * interval:
        state = "stale"
    else:
        state = "fresh"
    counts = last_ok["counts"] if last_ok else {}
    file = feed_paths(settings.feeds_dir, feed.name)["xml"]
    token_part = (feed.token if reveal_tokens else "***") + "/" if feed.token else ""
    return {
        "name": feed.name,
        "account": settings.account or "main",
        "source": feed.source,
        "state": state,
        "state_text": STATE_TEXTS[state],
        "url": f"{settings.public_url.rstrip('/')}/feeds/{token_part}{feed.name}.xml",
        "schedule": {"cron": feed.cron or None, "interval_seconds": round(interval),
                     "text": f"по расписанию «{feed.cron}»" if feed.cron else f"каждые {duration_text(interval)}"},
        "stale_after_seconds": round(STALE_INTERVALS * interval),
        "stale_after_text": duration_text(STALE_INTERVALS * interval),
        "next_run_at": _iso(next_run(feed, now, last)),
        "last_success": None if last_ok is None else {
            "run_id": last_ok["id"], "finished_at": last_ok["finished_at"], "age_seconds": round(age),
            "offers": counts.get("offers"), "active": counts.get("active"), "inactive": counts.get("inactive"),
            "categories": counts.get("categories"), "seconds": counts.get("build_seconds"),
            "guard": counts.get("guard"),
        },
        "file": {"exists": file.exists(), "size": _size(file)},
        "last_attempt": None if last is None else {
            "run_id": last["id"], "status": last["status"], "started_at": last["started_at"],
            "finished_at": last["finished_at"], "mode": last["mode"], "guard": last["counts"].get("guard"),
        },
        "building": bool(last and last["status"] == "running"),
        "skipped": _skipped(last_ok),
        "error": _error(error_run),
        "totals": store.run_totals(source, "build"),
        "history": [{"run_id": run["id"], "started_at": run["started_at"], "status": run["status"],
                     "seconds": run["counts"].get("build_seconds"), "offers": run["counts"].get("offers")}
                    for run in reversed(history)],
        "retailcrm": _retailcrm(store, feed) if feed.retailcrm else None,
    }


PUSH_INTERRUPTED = Advice("Отправка в retailCRM прервана: процесс сервиса был остановлен",
                          "Принятое retailCRM сохранено; следующая отправка (после сборки или вебхука остатков) "
                          "пошлёт остальное.")
PUSH_FAILED = Advice("Отправка в retailCRM завершилась ошибкой",
                     "Подробности — в тексте ошибки ниже и в журнале сервиса. Следующая отправка повторит то, что не дошло.")


def _retailcrm(store: CatalogStore, feed: FeedSettings) -> dict:
    """The feed's pushes to retailCRM: the last one, the last that succeeded, what waits, the totals."""
    source = push_source(feed)
    last = store.last_run(source, "push")
    last_ok = store.last_run(source, "push", "ok")
    totals = store.push_totals(source)
    latest_stock = store.last_run("moysklad", "stock") if feed.source == "moysklad" else None
    failed = last if last and last["status"] in ("failed", "interrupted") else None
    error = None
    if failed:
        advice = failed["counts"].get("advice") or {}
        fallback = PUSH_INTERRUPTED if failed["status"] == "interrupted" else PUSH_FAILED
        error = {"run_id": failed["id"], "at": failed["finished_at"] or failed["started_at"],
                 "text": failed["error"] or "", "title": advice.get("title") or fallback.title,
                 "action": advice.get("action") or fallback.action}
    return {
        "url": feed.retailcrm.url, "site": feed.retailcrm.site,
        "stores": [target.code for target in feed.retailcrm.stores],
        "prices": [target.code for target in feed.retailcrm.prices],
        "last_push": _push_summary(last), "last_success": _push_summary(last_ok),
        "waiting": store.waiting_offers(feed.name),
        "last_stock_webhook": None if latest_stock is None else {
            "run_id": latest_stock["id"], "status": latest_stock["status"], "finished_at": latest_stock["finished_at"],
            "goods": latest_stock["counts"].get("offers"), "requests": latest_stock["requests"]},
        "totals": totals,
        "error": error,
    }


def _push_summary(run: dict | None) -> dict | None:
    if run is None:
        return None
    counts = run["counts"]
    return {"run_id": run["id"], "status": run["status"], "mode": run["mode"], "started_at": run["started_at"],
            "finished_at": run["finished_at"], "offers": counts.get("offers", 0), "records": counts.get("records", 0),
            "batches": counts.get("batches", 0), "not_found": counts.get("not_found", 0),
            "requests": run["requests"], "throttled": run["throttled"], "retries": run["retries"],
            "seconds": counts.get("seconds"), "latency_seconds": counts.get("latency_seconds")}


def _failed_attempt(last_build: dict | None, sync: dict | None, feed: FeedSettings) -> dict | None:
    """The run that failed this feed's latest attempt: its build, or the MoySklad sync that preceded it."""
    if last_build and last_build["status"] in ("failed", "interrupted"):
        return last_build
    if feed.source == "moysklad" and sync and sync["status"] in ("failed", "interrupted"):
        if last_build is None or sync["started_at"] >= last_build["started_at"]:
            return sync
    return None


def _error(run: dict | None) -> dict | None:
    if run is None:
        return None
    advice = advice_for(run["error"] or run["status"])
    what = "синхронизация с МоимСкладом" if run["kind"] == "sync" else "сборка"
    return {"run_id": run["id"], "kind": run["kind"], "at": run["finished_at"] or run["started_at"],
            "text": run["error"] or "", "title": advice.title, "action": advice.action, "what": what}


def _skipped(run: dict | None) -> dict:
    """Offers the last published build left out, grouped by reason, with a few examples each."""
    if run is None:
        return {"total": 0, "by_reason": []}
    counts = run["counts"]
    examples = counts.get("skipped_examples") or {}
    by_reason = [{"reason": reason, "count": count,
                  "examples": [{"id": e.get("id"), "name": e.get("name")} for e in examples.get(reason, [])[:SKIPPED_EXAMPLES]]}
                 for reason, count in sorted((counts.get("skipped_by_reason") or {}).items(), key=lambda kv: -kv[1])]
    return {"total": counts.get("skipped", 0), "by_reason": by_reason}


def _moysklad(store: CatalogStore, settings: Settings, last: dict | None) -> dict:
    """The last sync, whether the credentials work, and the API usage of recent syncs."""
    last_ok = store.last_run("moysklad", "sync", "ok")
    if last is None:
        credentials = "unknown"
    elif last["status"] == "ok":
        credentials = "ok"
    elif advice_for(last["error"]) is CREDENTIALS_REJECTED:
        credentials = "rejected"
    else:  # failed for another reason: the credentials worked when a sync last succeeded
        credentials = "ok" if last_ok else "unknown"
    totals = store.run_totals("moysklad", "sync")
    return {
        "base_url": "встроенный эмулятор (демо)" if settings.moysklad.emulator else settings.moysklad.base_url,
        "credentials": credentials,
        "last_sync": _run_summary(last),
        "last_successful_sync": _run_summary(last_ok),
        "bookmark": store.setting("moysklad", "bookmark"),
        "catalog": store.counts("moysklad"),
        "totals": totals,
        "error": _error(last) if last and last["status"] in ("failed", "interrupted") else None,
    }


def _run_summary(run: dict | None) -> dict | None:
    if run is None:
        return None
    counts = run["counts"]
    return {"run_id": run["id"], "kind": run["kind"], "status": run["status"], "mode": run["mode"],
            "started_at": run["started_at"], "finished_at": run["finished_at"], "requests": run["requests"],
            "throttled": run["throttled"], "retries": run["retries"], "error": run["error"],
            "rows": {k: v for k, v in counts.items() if isinstance(v, int)}}


def _exchange(settings: Settings, store: CatalogStore) -> dict:
    """Recent CommerceML sessions (the log is its own file: reading it never waits for an import)
    and the file imports they ran."""
    enabled = bool(settings.exchange.password)
    sessions, totals = [], {"sessions": 0, "failed": 0, "bytes": 0}
    if settings.exchange_log_path.exists():
        with ExchangeLog(settings.exchange_log_path) as log:
            sessions = log.recent(RECENT_SESSIONS)
            totals = log.totals()
    for session in sessions:
        session["result_text"] = SESSION_RESULTS.get(session["result"], session["result"])
    last_import = store.last_run("exchange", "import")
    return {"enabled": enabled, "sessions": sessions, "totals": totals,
            "imports": store.run_totals("exchange", "import"), "catalog": store.counts("exchange"),
            "orders": store.orders_summary(),
            "last_import": None if last_import is None else {
                **_run_summary(last_import), "seconds": _seconds(last_import)}}


def _seconds(run: dict) -> float | None:
    """How long a finished run took."""
    if not run["finished_at"]:
        return None
    return round((_parse(run["finished_at"]) - _parse(run["started_at"])).total_seconds(), 3)


SESSION_RESULTS = {"open": "идёт", "ok": "успешно", "failed": "ошибка"}


def healthz(data: dict) -> tuple[int, list[str]]:
    """The monitor's answer: 200 when every feed is fresh and the store opens, else 503 and the reasons."""
    return (200, ["ok"]) if data["ok"] else (503, data["problems"])


# --- the schedule -----------------------------------------------------------------------------------

def schedule_interval_seconds(feed: FeedSettings, now: dt.datetime) -> float:
    """The time between two builds: the interval, or the gap between the cron schedule's next two runs."""
    if not feed.cron:
        return feed.interval_minutes * 60
    trigger = crontab_trigger(feed.cron)
    first = trigger.get_next_fire_time(None, now.astimezone())
    second = trigger.get_next_fire_time(first, first + dt.timedelta(seconds=1))
    return (second - first).total_seconds() if first and second else 24 * 3600


def next_run(feed: FeedSettings, now: dt.datetime, last: dict | None) -> dt.datetime | None:
    """When the scheduler builds the feed next (an interval counts from the last build's start)."""
    if feed.cron:
        return crontab_trigger(feed.cron).get_next_fire_time(None, now.astimezone())
    if last is None:
        return now
    step = dt.timedelta(minutes=feed.interval_minutes)
    moment = _parse(last["started_at"]) + step
    while moment < now:
        moment += step
    return moment


# --- small helpers -----------------------------------------------------------------------------------

def _parse(text: str) -> dt.datetime:
    moment = dt.datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


def _age(text: str | None, now: dt.datetime) -> float:
    return max(0.0, (now - _parse(text)).total_seconds()) if text else 0.0


def _iso(moment: dt.datetime | None) -> str | None:
    return moment.astimezone(dt.timezone.utc).isoformat(timespec="seconds") if moment else None


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def duration_text(seconds: float) -> str:
    """A duration as an operator reads it: «45 с», «15 мин», «2 ч 10 мин», «3 дн»."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} с"
    if seconds < 3600:
        return f"{seconds // 60} мин"
    if seconds < 86400:
        hours, minutes = divmod(seconds // 60, 60)
        return f"{hours} ч" + (f" {minutes} мин" if minutes else "")
    return f"{seconds // 86400} дн"
