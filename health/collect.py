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
from urllib.parse import urlsplit

from core.build_pool import SCHEDULED, read_queue_state
from core.clock import MOSCOW
from core.cron import crontab_trigger
from core.russian import counted, grouped, plural
from core.settings import MAIN_ACCOUNT_LABEL, FeedSettings, Settings, redacted, token_variable
from feeds.build import CATALOG_NOT_LOADED, FAILED_AT_SYNC, PICTURES_MODE, feed_source
from feeds.progress import read_progress
from feeds.publish import feed_paths
from retailcrm.push import push_source
from store import CatalogStore, ExchangeLog, StoreError, open_catalog

HISTORY_BUILDS = 30
RECENT_SESSIONS = 20
SKIPPED_EXAMPLES = 3
# A feed is stale when its last published build is older than this many schedule intervals.
STALE_INTERVALS = 2
# ... or when its source changed after its last build and no rebuild followed within this long (a 1C
# exchange asks for one at once: this is the time it may take, not a schedule).
CHANGE_GRACE_SECONDS = 120
LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}

STATE_TEXTS = {
    "fresh": "свежий",
    "stale": "устарел",
    "failing": "ошибка сборки",
    "building": "собирается",  # the first build runs: nothing is published yet, and nothing is wrong
    "pending": "ещё не собран",
}
# What a build's progress steps are called on the page (the sync's, the pictures', the renderer's).
STAGE_TEXTS = {
    "start": "начало",
    "categories": "синхронизация с МоимСкладом: группы товаров",
    "assortment": "синхронизация с МоимСкладом: товары",
    "stock stock": "синхронизация с МоимСкладом: остатки",
    "stock reserve": "синхронизация с МоимСкладом: резервы",
    "stock inTransit": "синхронизация с МоимСкладом: товары в пути",
    "unit costs": "синхронизация с МоимСкладом: себестоимость",
    "pictures": "загрузка картинок",
    "picture links": "ссылки на картинки",
    "render": "запись файла фида",
}


@dataclass(frozen=True)
class Advice:
    """An error in plain words and what to do about it."""

    title: str
    action: str


STORE_UNREADABLE = Advice(
    "Каталог аккаунта не открывается: фид не собирается",
    "посмотрите текст ошибки ниже. Если файл catalog.sqlite повреждён или это не база SQLite, остановите сервис, "
    "переместите файл (и файлы -wal, -shm рядом с ним) в сторону и запустите сервис: следующая сборка загрузит каталог "
    "заново. Если не хватает прав или места на диске — исправьте это; опубликованный фид пока раздаётся прежний.")
CREDENTIALS_REJECTED = Advice(
    "МойСклад не принял токен или логин/пароль",
    "Выпустите новый токен в МоёмСкладе (Настройки → Токены) и запишите его в {key} или в "
    "переменную {variable}, затем перезапустите сервис. Выпуск нового токена отзывает старый.")
# Known failures, matched on the error text the run recorded (first match wins).
ADVICE = (
    (r"catalog is not loaded yet",
     Advice("Каталог ещё не загружен: фид не опубликован",
            "Фид из МоегоСклада публикуется после первой успешной синхронизации, фид из 1С — после первой выгрузки "
            "каталога из 1С или МоегоСклада на адрес обмена /exchange/1c. Пустой фид не публикуется, чтобы retailCRM "
            "не снял товары с продажи.")),
    (r"holds MoySklad account|holds the demo's",
     Advice("В этой папке данных каталог другого аккаунта МоегоСклада",
            "Один каталог — один аккаунт. Фиды этого каталога сняты с раздачи (файлы *.withdrawn), чтобы retailCRM "
            "не получал чужие товары. Если аккаунт сменился по ошибке, верните прежний токен; если намеренно — "
            "остановите сервис, перенесите папку, названную в ошибке, и запустите снова.")),
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
            "Освободите место на диске сервера (каталог data_dir).")),
    (r"price type|warehouse|not an attribute|unknown field|template",
     Advice("Ошибка в настройках фида",
            "Исправьте настройку фида, названную в тексте ошибки, в файле конфигурации и перезапустите сервис.")),
    (r"stopped without finishing|interrupted|service was stopping",
     Advice("Сборка прервана: процесс был остановлен",
            "Ничего из прерванной сборки не сохранено; следующая сборка по расписанию выполнит её заново.")),
    (r"locked|another .* run is in progress|busy",
     Advice("Каталог был занят другой загрузкой",
            "Обычно проходит само; следующая сборка по расписанию повторит попытку.")),
)
DEFAULT_ADVICE = Advice("Сборка завершилась ошибкой", "Подробности — в тексте ошибки ниже и в журнале сервиса.")


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
        account = {"name": view.account or MAIN_ACCOUNT_LABEL, "moysklad": None,
                   "store": {"ok": True, "path": str(view.store_path), "size": _size(view.store_path)}}
        accounts.append(account)
        try:
            store = open_catalog(view.store_path)
        except StoreError as exc:
            problems.append(f"каталог{' аккаунта ' + view.account if view.account else ''} не открывается: {exc}")
            account["store"] = {"ok": False, "path": str(view.store_path), "error": str(exc)}
            feeds += [_feed_without_store(view, feed, now, reveal_tokens, str(exc)) for feed in view.feeds]
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
    queue = _queue(settings, feeds, now, problems)
    notes = []
    for feed in feeds:
        if feed["state"] == "building":
            notes.append(f"фид {feed['name']}: {feed['state_text']} (первая сборка)"
                         + (f" — {feed['progress']['text']}" if feed["progress"].get("text") else ""))
        elif feed["state"] != "fresh":
            problems.append(f"фид {feed['name']}: {feed['state_text']}"
                            + (f" — {feed['error']['title']}" if feed["error"] else ""))
        if feed["retailcrm"] and feed["retailcrm"]["error"]:  # the file may be fresh while retailCRM's stock is not
            problems.append(f"фид {feed['name']}: последняя отправка в retailCRM не прошла — "
                            f"{feed['retailcrm']['error']['title']}")
    stuck = _orders_stuck(exchange, settings.exchange.orders_per_query)
    if stuck:
        problems.append(stuck)
    failed_session = _last_failed_session(exchange)
    if failed_session:
        problems.append(f"обмен с 1С: последний сеанс ({failed_session['client'] or 'клиент неизвестен'}) завершился "
                        f"ошибкой — {failed_session['error'] or 'причина не записана'}")
    return {
        "ok": not problems,
        "checked_at": _iso(now),
        "demo": settings.is_demo,
        "problems": problems,
        "notes": notes,  # not problems: a first build running
        "warnings": setup_warnings(settings),  # not problems either: nothing fails, but retailCRM misses something
        "store": accounts[0]["store"],
        "feeds": feeds,
        "moysklad": accounts[0]["moysklad"],
        "accounts": accounts,
        "exchange": exchange,
        "queue": queue,
        "settings": redacted(settings),
    }


# What each kind of work in the build queue is, on the page.
WORK_TEXTS = {
    SCHEDULED: "по расписанию",
    "rebuild": "вебхук МоегоСклада",
    "build": "кнопка «Собрать сейчас»",
    "exchange": "обмен с 1С",
    "stock": "остатки по вебхуку",
}
QUEUE_SHOWN = 10  # waiting works listed on the page (the count says how many there are)


def _queue(settings: Settings, feeds: list[dict], now: dt.datetime, problems: list[str]) -> dict | None:
    """The build pool as the scheduling process last wrote it (any worker may serve the page); each feed
    gets its place in it, and a build that has waited longer than its feed's interval is a problem."""
    state = read_queue_state(settings.instance_dir, now.timestamp())
    if state is None:
        return None
    moment = now.timestamp()
    by_name = {feed["name"]: feed for feed in feeds}

    def work(entry: dict, running: bool) -> dict:
        wait = round(max(0.0, (entry["started_at"] if running else moment) - entry["queued_at"]))
        return {"account": entry["account"] or MAIN_ACCOUNT_LABEL, "kind": entry["kind"],
                "kind_text": WORK_TEXTS.get(entry["kind"], entry["kind"]), "feeds": entry["feeds"],
                "queued_at": _iso(_from_unix(entry["queued_at"])),
                "started_at": _iso(_from_unix(entry["started_at"])) if running else None,
                "wait_seconds": wait, "wait_text": duration_text(wait),
                "running_seconds": round(max(0.0, moment - entry["started_at"])) if running else None}

    for name, planned in (state.get("next_runs") or {}).items():  # the scheduler's own plan beats the page's estimate
        if name in by_name:
            by_name[name]["next_run_at"] = _iso(_from_unix(planned))
    running = [work(entry, True) for entry in state.get("running", [])]
    waiting = [work(entry, False) for entry in state.get("waiting", [])]
    # an account's builds never overlap: one waiting behind its own account's build waits whatever the pool's size
    # (a build slower than its interval shows as the feed turning stale), so only the others' waits are the pool's
    busy = {entry["account"] or MAIN_ACCOUNT_LABEL for entry in state.get("running", [])}
    for item in running + waiting:
        for name in item["feeds"]:
            feed = by_name.get(name)
            if feed is None or feed.get("queue"):
                continue
            feed["queue"] = {"state": "running" if item["started_at"] else "waiting", **item}
            interval = feed["schedule"]["interval_seconds"]
            if not item["started_at"] and item["account"] not in busy and item["wait_seconds"] > interval:
                problems.append(f"фид {name}: сборка ждёт в очереди дольше интервала ({item['wait_text']}, "
                                f"интервал {duration_text(interval)}) — пул сборок не успевает: увеличьте "
                                f"max_concurrent_builds (сейчас {state['size']}) или разнесите аккаунты по "
                                "нескольким экземплярам")
    oldest = max((item["wait_seconds"] for item in waiting), default=0)
    return {"size": state["size"], "running": len(running), "waiting": len(waiting),
            "oldest_wait_seconds": oldest, "oldest_wait_text": duration_text(oldest),
            "longest_wait_seconds": round(state.get("longest_wait_seconds") or 0),
            "running_works": running, "waiting_works": waiting[:QUEUE_SHOWN],
            "written_at": _iso(_from_unix(state["written_at"]))}


def _from_unix(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc)


def setup_warnings(settings: Settings) -> list[str]:
    """Settings that break what retailCRM reads although every build succeeds (the demo runs on this machine alone),
    and account folders the config no longer names."""
    warnings = [] if settings.is_demo or (urlsplit(settings.public_url).hostname or "") not in LOOPBACK_HOSTS else [
        f"public_url — {settings.public_url}: ссылки на фиды и картинки ведут на этот компьютер, и retailCRM не "
        "может их открыть (картинки товаров не загрузятся). Задайте public_url (или SKLADBRIDGE_PUBLIC_URL) — "
        "адрес, по которому сервис доступен из интернета, например https://feed.example.ru, и перезапустите сервис."]
    for folder in unclaimed_account_folders(settings):
        warnings.append(
            f"Папка {folder} принадлежит аккаунту «{folder.name}», которого нет в accounts: конфигурации: его каталог "
            "не синхронизируется, фиды и картинки не раздаются. Если аккаунт переименован, остановите сервис, удалите "
            f"папку нового имени (если она уже создана) и переименуйте {folder.name} в новое имя — каталог, фиды и "
            "картинки сохранятся без сборки с нуля. Если клиент ушёл, удалите папку: в ней его каталог с закупочными ценами.")
    return warnings


def unclaimed_account_folders(settings: Settings) -> list[Path]:
    """Folders under the accounts folder that no configured account uses: an account renamed or removed in the
    config leaves its catalog there, unsynced and unserved, and a renamed one starts again from nothing."""
    try:
        folders = sorted(path for path in settings.accounts_dir.iterdir() if path.is_dir())
    except OSError:  # no accounts folder yet, or it cannot be read (the store checks say so)
        return []
    claimed = {account.name for account in settings.accounts}
    return [folder for folder in folders if folder.name not in claimed]


def open_feed_warning(settings: Settings, feed: FeedSettings) -> str | None:
    """A feed published without a token at a public address: anyone who guesses /feeds/<name>.xml reads the catalog
    (with purchase prices, by default). Not for a service only this machine can reach, as the demo is."""
    if feed.token or (urlsplit(settings.public_url).hostname or "") in LOOPBACK_HOSTS:
        return None
    cost = " вместе с закупочными ценами" if feed.purchase_price != "none" else ""
    return (f"Фид открыт всем по адресу, который легко угадать: любой, кто наберёт …/feeds/{feed.name}.xml, увидит "
            f"каталог{cost}. Задайте фиду token (16–128 латинских букв, цифр, «-» или «_»), перезапустите сервис "
            "и укажите в retailCRM новую ссылку.")


def _feed(store: CatalogStore, settings: Settings, feed: FeedSettings, now: dt.datetime, last_sync: dict | None,
          reveal_tokens: bool) -> dict:
    """One feed: its state, the published file, the last attempt and its history."""
    source = feed_source(feed)
    history = store.runs_of(source, "build", HISTORY_BUILDS)
    last_ok = next((run for run in history if run["status"] == "ok"), None) or store.last_run(source, "build", "ok")
    last = history[0] if history else None
    error_run = _failed_attempt(last, last_sync, feed)
    attempt = error_run if error_run and error_run["kind"] == "sync" else last
    age = _age(last_ok["finished_at"], now) if last_ok else None
    changed = _changed_after(store, feed, last_ok)
    progress = read_progress(settings.data_dir, feed.name)
    building = progress is not None or bool(last and last["status"] == "running")
    waiting_for_catalog = (error_run is not None and error_run is last and last_ok is None
                           and last["counts"].get("guard") == CATALOG_NOT_LOADED)
    if error_run and not waiting_for_catalog:
        state = "failing"
    elif last_ok is None:
        state = "building" if building else "pending"
    elif now > stale_from(feed, _parse(last_ok["finished_at"])) or (changed and _age(changed, now) > CHANGE_GRACE_SECONDS):
        state = "stale"
    else:
        state = "fresh"
    counts = last_ok["counts"] if last_ok else {}
    return {
        **_feed_card(settings, feed, now, reveal_tokens),
        "state": state,
        "state_text": STATE_TEXTS[state],
        "next_run_at": _iso(next_run(feed, now, attempt)),  # the scheduler's own plan replaces it (_queue)
        "last_success": None if last_ok is None else {
            "run_id": last_ok["id"],
            "number": last_ok["number"],
            "finished_at": last_ok["finished_at"], "age_seconds": round(age),
            "offers": counts.get("offers"), "active": counts.get("active"), "inactive": counts.get("inactive"),
            "categories": counts.get("categories"), "seconds": counts.get("build_seconds"),
            "guard": counts.get("guard"), "pictures_waiting": counts.get("pictures_waiting") or 0,
            "with_pictures": last_ok["mode"] == PICTURES_MODE,
        },
        "last_attempt": _attempt(attempt),
        "building": building,
        "progress": _progress(progress) if progress is not None else {},
        "source_changed_at": changed,
        "skipped": _skipped(last_ok),
        "error": _error(error_run, settings.account),
        "totals": store.run_totals(source, "build"),
        "history": [{"run_id": run["id"], "number": run["number"], "started_at": run["started_at"],
                     "status": run["status"], "seconds": run["counts"].get("build_seconds"),
                     "offers": run["counts"].get("offers")}
                    for run in reversed(history)],
        "retailcrm": _retailcrm(store, feed) if feed.retailcrm else None,
        "queue": None,  # its work in the build queue, filled in by _queue
    }


def _feed_card(settings: Settings, feed: FeedSettings, now: dt.datetime, reveal_tokens: bool) -> dict:
    """What the page shows of a feed from its settings and its published file, whatever its store says."""
    interval = schedule_interval_seconds(feed, now)
    file = feed_paths(settings.feeds_dir, feed.name)["xml"]
    token_part = (feed.token if reveal_tokens else "***") + "/" if feed.token else ""
    return {
        "name": feed.name,
        "account": settings.account or MAIN_ACCOUNT_LABEL,
        "source": feed.source,
        "url": f"{settings.public_url.rstrip('/')}/feeds/{token_part}{feed.name}.xml",
        "open_warning": open_feed_warning(settings, feed),
        "schedule": {"cron": feed.cron or None, "interval_seconds": round(interval),
                     "text": f"по расписанию «{feed.cron}» (время сервера)" if feed.cron else every_text(interval)},
        "stale_after_seconds": round(STALE_INTERVALS * interval),
        "stale_after_text": duration_text(STALE_INTERVALS * interval),
        "file": {"exists": file.exists(), "size": _size(file)},
    }


def _feed_without_store(settings: Settings, feed: FeedSettings, now: dt.datetime, reveal_tokens: bool,
                        error: str) -> dict:
    """A feed of an account whose store does not open: failing, listed (a per-feed alert must not fall silent for
    exactly the broken account), its counters left out rather than reported as zero."""
    return {
        **_feed_card(settings, feed, now, reveal_tokens),
        "state": "failing", "state_text": STATE_TEXTS["failing"], "next_run_at": None, "last_success": None,
        "last_attempt": None, "building": False, "progress": {}, "source_changed_at": None, "skipped": _skipped(None),
        "error": {"run_id": None, "number": None, "kind": "store", "at": None, "text": error,
                  "title": STORE_UNREADABLE.title, "action": STORE_UNREADABLE.action, "what": "Каталог"},
        "totals": None, "history": [], "retailcrm": None, "queue": None,
    }


def _changed_after(store: CatalogStore, feed: FeedSettings, build: dict | None) -> str | None:
    """When a 1C import (or deactivation) changed an exchange feed's catalog after its last published
    build began, or None. MoySklad feeds sync as their build's first step, so theirs never lags."""
    if feed.source != "exchange" or build is None:
        return None
    change = store.last_run("exchange", status="ok")
    if change is None or change["id"] < build["id"]:  # run ids are in start order; a build waits for an import to commit
        return None
    archived = any(count for key, count in change["counts"].items() if key.startswith("archived_"))
    return change["finished_at"] if change["kind"] == "import" or archived else None


def _attempt(run: dict | None) -> dict | None:
    """The latest attempt to publish: the last build, or the MoySklad sync that failed after it (which
    stopped the next build before it had a run of its own)."""
    if run is None:
        return None
    return {"run_id": run["id"], "number": run["number"], "kind": run["kind"], "status": run["status"],
            "started_at": run["started_at"],
            "finished_at": run["finished_at"], "mode": run["mode"], "guard": run["counts"].get("guard")}


def _progress(progress: dict) -> dict:
    """A running build's step as its process last wrote it, with a Russian line for the page."""
    stage, done, total = progress.get("stage"), progress.get("done") or 0, progress.get("total")
    text = STAGE_TEXTS.get(stage, stage or "")
    if stage and stage != "start":
        text += f": {grouped(done)}" + (f" из {grouped(total)} ({done * 100 // total} %)" if total else "")
        if progress.get("rate"):
            text += f", {progress['rate']:.1f} в секунду".replace(".", ",")
        left = progress.get("seconds_left")
        if left is not None and total and done < total:
            text += f", осталось около {duration_text(max(left, 1))}"
    return {"stage": stage, "done": done, "total": total, "rate": progress.get("rate"),
            "seconds_left": progress.get("seconds_left"), "started_at": progress.get("started_at"), "text": text}


PUSH_INTERRUPTED = Advice("Отправка в retailCRM прервана: процесс был остановлен",
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
        error = {"run_id": failed["id"], "number": failed["number"],
                 "at": failed["finished_at"] or failed["started_at"],
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
    """The run that failed this feed's latest attempt: its build, or the MoySklad sync that preceded it (also when
    the build is recorded as failed at its sync: the sync's run has the detail)."""
    failed_sync = feed.source == "moysklad" and sync and sync["status"] in ("failed", "interrupted")
    if last_build and last_build["status"] in ("failed", "interrupted"):
        return sync if last_build["mode"] == FAILED_AT_SYNC and failed_sync else last_build
    if failed_sync and (last_build is None or sync["started_at"] >= last_build["started_at"]):
        return sync
    return None


def _error(run: dict | None, account: str) -> dict | None:
    """A failed run in plain words, with its place among its own kind (build №3, sync №12)."""
    if run is None:
        return None
    advice = advice_for(run["error"] or run["status"])
    if advice is CREDENTIALS_REJECTED:  # name the token's place for this account, not the main one's
        key = f"moysklad.token аккаунта {account} (раздел accounts)" if account else "moysklad.token"
        advice = Advice(advice.title, advice.action.format(key=key, variable=token_variable(account)))
    what = "Синхронизация с МоимСкладом" if run["kind"] == "sync" else "Сборка"
    return {"run_id": run["id"], "number": run["number"], "kind": run["kind"],
            "at": run["finished_at"] or run["started_at"],
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
    bookmark = store.setting("moysklad", "bookmark")
    return {
        "base_url": "встроенный эмулятор (демо)" if settings.moysklad.emulator else settings.moysklad.base_url,
        "credentials": credentials,
        "last_sync": _run_summary(last),
        "last_successful_sync": _run_summary(last_ok),
        "bookmark": bookmark,  # MoySklad's Moscow wall-clock time, as the API filters take it
        "bookmark_at": _moscow_to_iso(bookmark),
        "catalog": store.counts("moysklad"),
        "totals": totals,
        "totals_text": _api_usage(totals["requests"], totals["throttled"], totals["retries"]),
        "error": _error(last, settings.account) if last and last["status"] in ("failed", "interrupted") else None,
    }


def _api_usage(requests: int | None, throttled: int | None, retries: int | None) -> str:
    """«57 запросов, без ответов 429 и повторов» / «57 запросов, 3 ответа 429 (МойСклад ограничил частоту), 2 повтора»."""
    parts = [counted(requests or 0, "запрос", "запроса", "запросов")]
    if throttled:
        parts.append(counted(throttled, "ответ", "ответа", "ответов") + " 429 (МойСклад ограничивал частоту)")
    if retries:
        parts.append(counted(retries, "повтор", "повтора", "повторов"))
    if not throttled and not retries:
        parts.append("без ответов 429 и повторов")
    elif not throttled:
        parts.append("без ответов 429")
    elif not retries:
        parts.append("без повторов")
    return ", ".join(parts)


def _moscow_to_iso(moment: str | None) -> str | None:
    """A MoySklad moment («2026-11-29 05:02:00», Moscow time) as an ISO time the page shows in its own zone."""
    if not moment:
        return None
    try:
        return _iso(dt.datetime.fromisoformat(moment).replace(tzinfo=MOSCOW))
    except ValueError:
        return None


def _run_summary(run: dict | None) -> dict | None:
    if run is None:
        return None
    counts = run["counts"]
    return {"run_id": run["id"], "number": run["number"],
            "kind": run["kind"], "status": run["status"], "mode": run["mode"],
            "started_at": run["started_at"], "finished_at": run["finished_at"], "requests": run["requests"],
            "throttled": run["throttled"], "retries": run["retries"], "error": run["error"],
            "usage_text": _api_usage(run["requests"], run["throttled"], run["retries"]),
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


# Queries with orders in a row that 1C took and never confirmed (mode=success) before the page calls it a problem:
# one can be a session cut short, three are a 1C that fails on these orders every time.
UNCONFIRMED_QUERIES_PROBLEM = 3


def _orders_stuck(exchange: dict | None, per_query: int) -> str | None:
    """Why orders stopped reaching 1C, when they did: every query sends the oldest orders 1C has not confirmed, so
    while 1C fails on them, the orders after the first ``per_query`` never go."""
    orders = (exchange or {}).get("orders") or {}
    unconfirmed = orders.get("unconfirmed_queries", 0)
    if unconfirmed < UNCONFIRMED_QUERIES_PROBLEM or not orders.get("waiting_for_1c"):
        return None
    return (f"обмен с 1С: {unconfirmed} {plural(unconfirmed, 'запрос', 'запроса', 'запросов')} заказов подряд 1С "
            f"не подтвердила (mode=success) — она не может загрузить эти заказы; заказы сверх первых {per_query} "
            "(exchange.orders_per_query) в 1С не уходят. Посмотрите журнал обмена в 1С / МоёмСкладе")


def _last_failed_session(exchange: dict | None) -> dict | None:
    """The latest finished exchange session when it failed (1C's catalog or orders did not get through); None once a
    later one succeeded. A session 1C left without mode=complete is not a failure: many 1C versions never send it."""
    finished = (session for session in (exchange or {}).get("sessions", ()) if session["result"] != "open")
    latest = next(finished, None)
    return latest if latest and latest["result"] == "failed" else None


def _seconds(run: dict) -> float | None:
    """How long a finished run took."""
    if not run["finished_at"]:
        return None
    return round((_parse(run["finished_at"]) - _parse(run["started_at"])).total_seconds(), 3)


SESSION_RESULTS = {"open": "идёт", "ok": "успешно", "failed": "ошибка",
                   "expired": "закрыт по времени: 1С не завершил сеанс (mode=complete)"}


def healthz(data: dict) -> tuple[int, list[str]]:
    """The monitor's answer: 200 when every feed is fresh (or being built for the first time, said in a
    note) and the store opens, else 503 and the reasons."""
    return (200, ["ok", *data["notes"]]) if data["ok"] else (503, data["problems"])


# --- the schedule -----------------------------------------------------------------------------------

def schedule_interval_seconds(feed: FeedSettings, now: dt.datetime) -> float:
    """The time between two builds: the interval, or the gap between the cron schedule's next two runs."""
    if not feed.cron:
        return feed.interval_minutes * 60
    trigger = crontab_trigger(feed.cron)
    first = trigger.get_next_fire_time(None, now.astimezone())
    second = trigger.get_next_fire_time(first, first + dt.timedelta(seconds=1))
    return (second - first).total_seconds() if first and second else 24 * 3600


def stale_from(feed: FeedSettings, built: dt.datetime) -> dt.datetime:
    """When a feed last built at ``built`` turns stale: once STALE_INTERVALS scheduled runs after it have passed
    without a build (a cron schedule's quiet hours, a night or a weekend, miss nothing)."""
    if not feed.cron:
        return built + dt.timedelta(seconds=STALE_INTERVALS * feed.interval_minutes * 60)
    trigger, moment = crontab_trigger(feed.cron), built.astimezone()
    for _ in range(STALE_INTERVALS):
        moment = trigger.get_next_fire_time(None, moment + dt.timedelta(seconds=1))
        if moment is None:
            return dt.datetime.max.replace(tzinfo=dt.timezone.utc)
    return moment


def next_run(feed: FeedSettings, now: dt.datetime, last: dict | None) -> dt.datetime | None:
    """When the scheduler builds the feed next, as the page estimates it when no scheduler wrote its plan (an interval
    counts from the last attempt's start)."""
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


# (unit in seconds, its forms after a count, the form of «каждый» that goes with the one-form)
EVERY_UNITS = ((86400, ("день", "дня", "дней"), "каждый"), (3600, ("час", "часа", "часов"), "каждый"),
               (60, ("минуту", "минуты", "минут"), "каждую"), (1, ("секунду", "секунды", "секунд"), "каждую"))


def every_text(seconds: float) -> str:
    """How often, as Russian says it: «каждый час», «каждые 30 минут», «каждые 2 часа», «каждую 21 минуту»."""
    seconds = max(1, round(seconds))
    for size, forms, each in EVERY_UNITS:
        if seconds % size == 0:
            count = seconds // size
            noun = plural(count, *forms)
            if count == 1:
                return f"{each} {noun}"
            return f"{each if noun == forms[0] else 'каждые'} {count} {noun}"
    return f"каждые {seconds} секунд"  # not reached: every whole number of seconds divides by 1


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
