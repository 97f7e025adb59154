"""The operator pages: the health page, ``/health.json``, ``/healthz``, ``/metrics`` and "build now".

Everything shown comes from :func:`health.collect.collect`. The page and the JSON need the admin login
once ``admin.password`` is set; ``/healthz`` and ``/metrics`` follow ``admin.healthz_public`` and
``admin.metrics_public``. The build button is a POST carrying a CSRF token that must match the
token cookie set with the page (double submit), and from another origin it is refused.
"""

from __future__ import annotations

import datetime as dt
import secrets
from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app, jsonify, redirect, render_template, request, url_for
from markupsafe import Markup, escape

from core.credentials import basic_auth_matches, tokens_match
from core.mailbox import BUILD
from health.collect import HISTORY_BUILDS, collect, duration_text, healthz
from health.metrics import render_metrics
from store import open_catalog

status_bp = Blueprint("status", __name__, template_folder="templates")

CSRF_COOKIE = "skladbridge_csrf"
CSRF_FIELD = "csrf"


@status_bp.before_request
def _admin_only():
    """The admin login for everything here but the monitor endpoints the config leaves open."""
    admin = _settings().admin
    if not admin.password:
        return None
    if request.endpoint == "status.healthz_endpoint" and admin.healthz_public:
        return None
    if request.endpoint == "status.metrics" and admin.metrics_public:
        return None
    if basic_auth_matches(request.authorization, admin.login, admin.password):
        return None
    return Response("Нужен логин администратора (admin.login / admin.password в конфигурации).\n", status=401,
                    mimetype="text/plain", headers={"WWW-Authenticate": 'Basic realm="skladbridge", charset="UTF-8"'})


@status_bp.get("/")
@status_bp.get("/health")
def page():
    """The health page, in Russian, for the operator."""
    settings = _settings()
    data = collect(settings, reveal_tokens=bool(settings.admin.password))
    requested = {note.key: note.payload for note in settings.mailbox.notes(BUILD)}
    token = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)
    started = request.args.get("build")
    after = request.args.get("after", type=int)
    banner = _banner(data, started, after) if started else None
    refresh = any(f["building"] or f["name"] in requested for f in data["feeds"]) or (banner and banner["running"])
    html = render_template("health.html", data=data, requested=requested, csrf=token, banner=banner,
                           refresh=refresh, protected=bool(settings.admin.password),
                           scheduler_running=settings.mailbox.reader_running())
    response = Response(html, mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    response.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="Strict", secure=request.is_secure)
    return response


@status_bp.get("/health.json")
@status_bp.get("/status.json")
def health_json():
    """The page's data for machines; secrets as ***."""
    data = collect(_settings())
    return jsonify(data), 200


@status_bp.get("/healthz", endpoint="healthz_endpoint")
def healthz_endpoint():
    """200 "ok" when every feed is fresh and the store opens; else 503 and one reason per line."""
    code, lines = healthz(collect(_settings()))
    return Response("\n".join(lines) + "\n", status=code, mimetype="text/plain",
                    headers={"Cache-Control": "no-store"})


@status_bp.get("/metrics")
def metrics():
    body, content_type = render_metrics(collect(_settings()))
    return Response(body, content_type=content_type)


@status_bp.post("/health/build/<name>")
def build_now(name: str):
    """Ask the scheduler to build a feed now (forced past the guard when asked); back to the page."""
    settings = _settings()
    found = settings.find_feed(name)
    if not _same_origin() or not tokens_match(request.form.get(CSRF_FIELD), request.cookies.get(CSRF_COOKIE)):
        return Response("Запрос отклонён: устаревшая страница или запрос с другого сайта. Обновите страницу "
                        "и нажмите кнопку ещё раз.\n", status=403, mimetype="text/plain")
    if found is None:
        return Response(f"Фид «{name}» не найден в конфигурации.\n", status=404, mimetype="text/plain")
    account, feed = found
    with open_catalog(account.store_path) as store:
        after = store.latest_run_id()  # whatever run of this feed comes next has a larger id
    settings.mailbox.post(BUILD, feed.name, force=request.form.get("force") == "1")
    current_app.logger.info("feed %s: build requested on the health page from %s", name, request.remote_addr)
    return redirect(url_for("status.page", build=name, after=after, _anchor=f"feed-{name}"), 303)


def _same_origin() -> bool:
    """A browser names the page's origin on a POST; it must be this service's own."""
    origin = request.headers.get("Origin") or request.headers.get("Referer")
    if not origin or origin == "null":
        return origin is None  # no header at all: not a browser's cross-site request
    parts = urlsplit(origin)
    return f"{parts.scheme}://{parts.netloc}" == request.host_url.rstrip("/")


def _banner(data: dict, name: str, after: int | None) -> dict | None:
    """The outcome of the build the button asked for: waiting, running, or how it ended."""
    feed = next((f for f in data["feeds"] if f["name"] == name), None)
    if feed is None:
        return None
    last = feed["last_attempt"]
    error = feed["error"]
    if error and error["kind"] == "sync" and error["run_id"] > (after or 0):
        # the MoySklad sync that starts a build failed: that build never got a run of its own
        return {"feed": name, "running": False, "kind": "bad",
                "text": f"Сборка фида «{name}» не удалась: {error['title']}. Прежний файл продолжает раздаваться."}
    if last is None or last["run_id"] <= (after or 0):
        return {"feed": name, "running": True, "kind": "info",
                "text": f"Сборка фида «{name}» запрошена и скоро начнётся; страница обновляется сама."}
    if last["status"] == "running":
        return {"feed": name, "running": True, "kind": "info",
                "text": f"Идёт сборка №{last['run_id']} фида «{name}»; страница обновляется сама."}
    if last["status"] == "ok":
        success = feed["last_success"]
        return {"feed": name, "running": False, "kind": "ok",
                "text": f"Сборка №{last['run_id']} фида «{name}» завершена: опубликовано "
                        f"{success['offers']} предложений."}
    return {"feed": name, "running": False, "kind": "bad",
            "text": f"Сборка №{last['run_id']} фида «{name}» не удалась: {error['title'] if error else last['status']}. "
                    "Прежний файл продолжает раздаваться."}


def _settings():
    return current_app.config["SETTINGS"]


# --- helpers the template uses ---------------------------------------------------------------------

@status_bp.app_template_filter("when")
def when(text: str | None) -> str:
    """An ISO time as the server's local time with its UTC offset: «29.11.2026 05:12 (UTC+03:00)»."""
    if not text:
        return "—"
    moment = dt.datetime.fromisoformat(text).astimezone()
    offset = moment.strftime("%z")
    return f"{moment:%d.%m.%Y %H:%M} (UTC{offset[:3]}:{offset[3:]})"


@status_bp.app_template_filter("ago")
def ago(text: str | None) -> str:
    """How long ago: «12 мин назад»; in the future: «через 5 мин»."""
    if not text:
        return "—"
    seconds = (dt.datetime.now(dt.timezone.utc) - dt.datetime.fromisoformat(text)).total_seconds()
    if abs(seconds) < 30:
        return "только что" if seconds >= 0 else "сейчас"
    return f"{duration_text(seconds)} назад" if seconds > 0 else f"через {duration_text(-seconds)}"


@status_bp.app_template_filter("size")
def size(value: int | None) -> str:
    if value is None:
        return "—"
    for unit, step in (("ГБ", 1 << 30), ("МБ", 1 << 20), ("КБ", 1 << 10)):
        if value >= step:
            return f"{value / step:.1f} {unit}"
    return f"{value} Б"


@status_bp.app_template_filter("number")
def number(value) -> str:
    """Thousands separated by a thin space, as Russian texts write them."""
    return "—" if value is None else f"{value:,}".replace(",", "\u202f")


@status_bp.app_template_global("bar_chart")
def bar_chart(history: list[dict], key: str, unit: str, label: str) -> Markup:
    """An inline SVG bar chart of the last builds; failed builds in red, each bar titled with its value."""
    width, height, gap = 300, 60, 2
    values = [run.get(key) or 0 for run in history]
    top = max(values, default=0) or 1
    bar = (width - gap * (HISTORY_BUILDS - 1)) / HISTORY_BUILDS  # a slot per build shown, newest on the right
    offset = (HISTORY_BUILDS - len(values)) * (bar + gap)
    bars = []
    for index, (run, value) in enumerate(zip(history, values)):
        h = max(1.0, value / top * (height - 4)) if value else 1.0
        color = "#2e7d32" if run["status"] == "ok" else "#999" if run["status"] == "running" else "#c62828"
        if run["status"] in ("failed", "interrupted"):
            h = max(h, height * 0.35)  # a failed build stands out even when it got no figures
        title = f"№{run['run_id']} {when(run['started_at'])}: {value:g} {unit}" if value else f"№{run['run_id']}: {run['status']}"
        bars.append(f'<rect x="{offset + index * (bar + gap):.1f}" y="{height - h:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                    f'fill="{color}"><title>{escape(title)}</title></rect>')
    return Markup(f'<svg class="chart" role="img" aria-label="{escape(label)}" viewBox="0 0 {width} {height}" '
                  f'width="{width}" height="{height}">{"".join(bars)}</svg>')
