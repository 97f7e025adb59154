"""Webhooks of the emulated account: /entity/webhook and /entity/webhookstock kept as MoySklad keeps them,
and notifications POSTed to their URLs from a background thread, as MoySklad sends them.

Sources: spec components/schemas/Webhook, WebhookStock, WebhookNotificationPayload,
WebhookStockNotificationPayload and their enums; md/dictionaries/_webhook.md and _webhookstock.md of
moysklad/api-remap-1.2-doc ("doc: ..." below).
"""

from __future__ import annotations

import http.client
import json
import queue
import threading
import time
import uuid
from datetime import datetime
from urllib.parse import urlsplit

from .catalog import Catalog, format_moment, moscow_now
from .protocol import STOCK_INTERVAL, ApiError

ACTIONS = ("CREATE", "UPDATE", "DELETE", "PROCESSED")  # spec WebhookAction
DIFF_TYPES = ("NONE", "FIELDS")  # spec WebhookDiffType
METHODS = ("POST",)  # spec WebhookMethod
STOCK_TYPES = ("stock",)  # spec WebhookStockStockType
REPORT_TYPES = ("all", "bystore")  # spec WebhookStockReportType
URL_MAX = 255  # spec Webhook.url / WebhookStock.url maxLength
PER_COMBINATION = 5  # doc: "не более 5 вебхуков с разными url" per entityType+action (stockType+reportType)
# Entity types of the spec (x-entity-static-builder) a webhook may watch; doc: "кроме webhook, discount, notes"
ENTITY_TYPES = frozenset((
    "accumulationdiscount", "bonustransaction", "bundle", "cashin", "cashout", "commissionreportin",
    "commissionreportout", "consignment", "contract", "counterparty", "country", "currency", "customentity",
    "customerorder", "demand", "emissionorder", "employee", "enter", "expenseitem", "facturein", "factureout",
    "group", "internalorder", "inventory", "invoicein", "invoiceout", "loss", "move", "organization", "paymentin",
    "paymentout", "personaldiscount", "prepayment", "prepaymentreturn", "processing", "processingorder",
    "processingplan", "processingplanfolder", "processingprocess", "processingstage", "product", "productfolder",
    "productiontask", "project", "purchaseorder", "purchasereturn", "region", "retaildemand", "retaildrawercashin",
    "retaildrawercashout", "retailsalesreturn", "retailshift", "retailstore", "saleplatform", "saleschannel",
    "salesreturn", "service", "specialpricediscount", "store", "supply", "task", "taxrate", "thing", "uom", "variant",
))
ASYNC_TYPE = "async"  # doc: PROCESSED "возможно только для асинхронных задач"
ANSWER_WITHIN = 1.5  # doc: "ожидаем получить ответ с HTTP статусом 200 или 204 в течение 1500 миллисекунд"
EXTRA_ATTEMPTS = 3  # doc: "осуществляет еще 3 попытки отправки ... последовательно, без таймаутов между ними"
DELIVERIES_KEPT = 10000


def missing(field: str) -> ApiError:
    """md/_errors.md #3000."""
    return ApiError(412, 3000, f"Ошибка сохранения объекта: поле '{field}' не может быть пустым или отсутствовать",
                    parameter=field)


def wrong_type(field: str, kind: str) -> ApiError:
    """md/_errors.md #2016."""
    return ApiError(400, 2016, f"Ошибка формата: значение поля '{field}' не соответствует типу {kind}")


def not_allowed(field: str, value, allowed) -> ApiError:
    """md/_errors.md #3005 (a value outside an enum)."""
    return ApiError(412, 3005, f"Ошибка сохранения объекта: неверное значение '{value}' поля '{field}'. Допустимые "
                               f"значения: {', '.join(sorted(allowed))}", parameter=field)


def not_found(kind: str, hook_id: str) -> ApiError:
    return ApiError(404, 1021, f"Объект с типом '{kind}' и идентификатором '{hook_id}' не найден")


class Subscriptions:
    """The webhooks (or stock webhooks) of the account: validated, unique, at most five per combination."""

    def __init__(self, kind: str, fields: dict, unique: tuple, defaults: dict, rule=None):
        self.kind, self.fields, self.unique, self.defaults, self.rule = kind, fields, unique, defaults, rule
        self.records: dict[str, dict] = {}

    def validate(self, body, current: dict | None = None) -> dict:
        """The record `body` makes (a new one, or `current` changed), or the error MoySklad answers."""
        if not isinstance(body, dict):
            raise ApiError(400, 2000, "Ошибка формата: отсутствует начало объекта")
        record = dict(current or self.defaults)
        for field, (kind, check) in self.fields.items():
            if field not in body:
                continue
            value = body[field]
            if kind == "boolean" and not isinstance(value, bool):
                raise wrong_type(field, "логический")
            if kind == "string" and not isinstance(value, str):
                raise wrong_type(field, "строка")
            if check:
                check(field, value)
            record[field] = value
        for field in self.unique:  # the fields the doc marks "+Необходимо при создании"
            if not record.get(field):
                raise missing(field)
        if self.rule:
            self.rule(record)
        return record

    def check_limits(self, record: dict, own_id: str | None) -> None:
        others = [r for r in self.records.values() if r["id"] != own_id]
        if any(all(r[f] == record[f] for f in self.unique) for r in others):
            # doc: "сочетание ... должно быть уникальным"; md/_errors.md #3006
            raise ApiError(412, 3006, "Ошибка сохранения объекта: нарушено ограничение уникальности параметра "
                                      f"'{', '.join(self.unique)}'", parameter="url")
        combination = [f for f in self.unique if f != "url"]
        if sum(all(r[f] == record[f] for f in combination) for r in others) >= PER_COMBINATION:
            raise ApiError(412, 3006, f"Ошибка сохранения объекта: для сочетания {', '.join(combination)} можно "
                                      f"создать не более {PER_COMBINATION} вебхуков")

    def create(self, body) -> dict:
        record = self.validate(body)
        self.check_limits(record, None)
        record["id"] = str(uuid.uuid4())
        self.records[record["id"]] = record
        return record

    def update(self, hook_id: str, body) -> dict:
        record = self.validate(body, self.get(hook_id))
        self.check_limits(record, hook_id)
        self.records[hook_id] = record
        return record

    def get(self, hook_id: str) -> dict:
        if hook_id not in self.records:
            raise not_found(self.kind, hook_id)
        return self.records[hook_id]

    def delete(self, hook_id: str) -> None:
        self.get(hook_id)
        del self.records[hook_id]


def check_url(field: str, value: str) -> None:
    """spec Webhook.url: format uri, maxLength 255; the receiver is reached over http(s)."""
    parts = urlsplit(value)
    if len(value) > URL_MAX or parts.scheme not in ("http", "https") or not parts.netloc:
        raise ApiError(412, 3016, f"Ошибка валидации: Поле '{field}' должно соответствовать формату 'URL (http или "
                                  f"https, до {URL_MAX} символов)'", parameter=field)


def one_of(allowed) -> callable:
    def check(field: str, value) -> None:
        if value not in allowed:
            raise not_allowed(field, value, allowed)
    return check


def processed_only_for_async(record: dict) -> None:
    """doc: "Задать значение PROCESSED возможно только для асинхронных задач"."""
    if (record["action"] == "PROCESSED") != (record["entityType"] == ASYNC_TYPE):
        raise not_allowed("action", record["action"], ("PROCESSED",) if record["entityType"] == ASYNC_TYPE
                          else ACTIONS[:3])


def entity_subscriptions() -> Subscriptions:
    return Subscriptions("webhook", {
        "url": ("string", check_url), "action": ("string", one_of(ACTIONS)),
        "entityType": ("string", one_of(ENTITY_TYPES | {ASYNC_TYPE})), "method": ("string", one_of(METHODS)),
        "diffType": ("string", one_of(DIFF_TYPES)), "enabled": ("boolean", None),
    }, unique=("entityType", "action", "url"), defaults={"enabled": True, "method": "POST", "diffType": "NONE"},
        rule=processed_only_for_async)


def stock_subscriptions() -> Subscriptions:
    return Subscriptions("webhookstock", {
        "url": ("string", check_url), "stockType": ("string", one_of(STOCK_TYPES)),
        "reportType": ("string", one_of(REPORT_TYPES)), "enabled": ("boolean", None),
    }, unique=("stockType", "reportType", "url"), defaults={"enabled": True})


class WebhookHub:
    """Webhooks of one account and the thread that sends their notifications, recorded in `deliveries`."""
    # entity notifications follow each catalog change at once; stock ones go out every stock_interval
    # seconds when the physical stock changed

    def __init__(self, catalog: Catalog, base_url: str, login: str, stock_interval: float = STOCK_INTERVAL,
                 answer_within: float = ANSWER_WITHIN):
        self.catalog, self.base_url, self.login = catalog, base_url, login
        self.stock_interval, self.answer_within = stock_interval, answer_within
        self.hooks = entity_subscriptions()
        self.stock_hooks = stock_subscriptions()
        self.lock = threading.Lock()
        self._deliveries: list[dict] = []
        self._outbox: queue.Queue = queue.Queue()
        self._stock_since: datetime | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        self.catalog.subscribe(self.observe)
        self._thread = threading.Thread(target=self._run, name="moysklad-emulator-webhooks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.catalog.unsubscribe(self.observe)
        self._stop.set()
        self._outbox.put(None)  # wakes the thread
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def deliveries(self) -> list[dict]:
        with self.lock:
            return list(self._deliveries)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """True once every queued notification has been sent (for tests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._outbox.unfinished_tasks:
                return True
            time.sleep(0.01)
        return False

    def subscriptions(self, kind: str) -> Subscriptions:
        return self.hooks if kind == "webhook" else self.stock_hooks

    def create(self, kind: str, body) -> dict:
        with self.lock:
            return dict(self.subscriptions(kind).create(body))

    def update(self, kind: str, hook_id: str, body) -> dict:
        with self.lock:
            return dict(self.subscriptions(kind).update(hook_id, body))

    def get(self, kind: str, hook_id: str) -> dict:
        with self.lock:
            return dict(self.subscriptions(kind).get(hook_id))

    def delete(self, kind: str, hook_id: str) -> None:
        with self.lock:
            self.subscriptions(kind).delete(hook_id)

    def records(self, kind: str) -> list[dict]:
        with self.lock:
            return [dict(record) for record in self.subscriptions(kind).records.values()]

    # -- catalog side -----------------------------------------------------------------------------

    def observe(self, event: dict) -> None:
        """Called by the catalog under its lock: only queue work here."""
        if event["type"] == "entity":
            self._outbox.put(("entity", event))
        elif event["physical"]:
            with self.lock:  # doc: webhookstock fires on stockType "stock", the physical stock
                if self._stock_since is None:
                    self._stock_since = event["moment"]

    def flush_stock(self) -> int:
        """Queue one stock notification per enabled stock webhook if stock changed since the last batch."""
        with self.lock:
            since, self._stock_since = self._stock_since, None
        hooks = [h for h in self.records("webhookstock") if h["enabled"]]
        if since is None:
            return 0
        for hook in hooks:
            self._outbox.put(("stock", hook, since))
        return len(hooks)

    # -- delivery ---------------------------------------------------------------------------------

    def _run(self) -> None:
        next_flush = time.monotonic() + self.stock_interval
        while not self._stop.is_set():
            try:
                job = self._outbox.get(timeout=max(0.0, next_flush - time.monotonic()))
            except queue.Empty:
                job = None
            else:
                try:
                    if job is not None:
                        self._deliver_job(job)
                finally:
                    self._outbox.task_done()
            if time.monotonic() >= next_flush:
                self.flush_stock()
                next_flush = time.monotonic() + self.stock_interval

    def _deliver_job(self, job: tuple) -> None:
        if job[0] == "stock":
            _, hook, since = job
            self.deliver("webhookstock", hook, self.stock_payload(hook, since))
            return
        event = job[1]
        for hook in [h for h in self.records("webhook") if h["enabled"]]:
            events = [self.event(hook, action, kind, item_id, fields)
                      for action, kind, item_id, fields in event["events"]
                      if kind == hook["entityType"] and action == hook["action"]]
            if events:
                self.deliver("webhook", hook, {"auditContext": self.audit_context(event["moment"]), "events": events})

    def audit_context(self, moment: datetime) -> dict:
        """spec WebhookAuditContext; shape as the doc's example (meta type audit, moment to the second, uid)."""
        return {"meta": {"type": "audit", "href": f"{self.base_url}/audit/{uuid.uuid4()}"},
                "moment": format_moment(moment)[:19], "uid": self.login}

    def event(self, hook: dict, action: str, kind: str, item_id: str, fields: list) -> dict:
        """spec WebhookEvent; updatedFields only for diffType FIELDS and action UPDATE (doc)."""
        body = {"meta": {"type": kind, "href": f"{self.base_url}/entity/{kind}/{item_id}"}}
        if action == "UPDATE" and hook.get("diffType") == "FIELDS":
            body["updatedFields"] = list(fields)
        body.update(action=action, accountId=self.catalog.ids.account)
        return body

    def stock_payload(self, hook: dict, since: datetime) -> dict:
        """spec WebhookStockNotificationPayload: no quantities, a /current?changedSince= report URL to fetch."""
        changed_since = format_moment(since)[:19]  # as the doc's example: "changedSince=2022-09-24 19:14:32"
        report_url = f"{self.base_url}/report/stock/{hook['reportType']}/current?changedSince={changed_since}"
        return {"accountId": self.catalog.ids.account, "stockType": hook["stockType"],
                "reportType": hook["reportType"], "reportUrl": report_url}

    def deliver(self, kind: str, hook: dict, payload: dict) -> None:
        """POST to the hook's URL with ?requestId=; up to 3 more attempts at once unless 200/204 within 1.5 s."""
        request_id = str(uuid.uuid4())
        separator = "&" if urlsplit(hook["url"]).query else "?"
        url = f"{hook['url']}{separator}requestId={request_id}"
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        for attempt in range(1, EXTRA_ATTEMPTS + 2):
            status, error, elapsed = self.post(url, data)
            ok = status in (200, 204) and elapsed <= self.answer_within
            with self.lock:
                del self._deliveries[:-DELIVERIES_KEPT]
                self._deliveries.append({"kind": kind, "hook_id": hook["id"], "url": url, "request_id": request_id,
                                         "attempt": attempt, "status": status, "ok": ok, "elapsed": elapsed,
                                         "error": error, "payload": payload, "at": format_moment(moscow_now())})
            if ok or self._stop.is_set():
                return

    def post(self, url: str, data: bytes) -> tuple[int | None, str | None, float]:
        parts = urlsplit(url)
        connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        started = time.monotonic()
        connection = connection_class(parts.netloc, timeout=self.answer_within)
        try:
            path = parts.path or "/"
            connection.request("POST", f"{path}?{parts.query}", body=data,
                               headers={"Content-Type": "application/json", "Content-Length": str(len(data))})
            response = connection.getresponse()
            response.read()
            return response.status, None, time.monotonic() - started
        except (OSError, http.client.HTTPException) as exc:
            return None, f"{type(exc).__name__}: {exc}", time.monotonic() - started
        finally:
            connection.close()
