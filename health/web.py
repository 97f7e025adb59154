"""The operator pages: the health page, ``/health.json``, ``/healthz``, ``/metrics`` and "build now".

Everything shown comes from :func:`health.collect.collect`. The page and the JSON need the admin login
once ``admin.password`` is set; ``/healthz`` and ``/metrics`` follow ``admin.healthz_public`` and
``admin.metrics_public``. The build button is a POST carrying a CSRF token that must match the
token cookie set with the page (double submit), and from another origin it is refused.
"""

from __future__ import annotations

import datetime as dt
import math
import secrets
from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app, jsonify, redirect, render_template, request, url_for
from markupsafe import Markup, escape

from core.credentials import basic_auth_matches, tokens_match
from core.mailbox import BUILD
from core.russian import grouped, plural

# health.collect, health.metrics and the store are imported where a request needs them: the app and its command
# line start without SQLite, lxml, requests or prometheus_client.

status_bp = Blueprint("status", __name__, template_folder="templates")

CSRF_COOKIE = "skladbridge_csrf"
CSRF_FIELD = "csrf"
BUILD_FORM_BYTES = 4096  # the build button's form: the CSRF token and the force flag


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
    from health.collect import collect

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
                           scheduler_running=settings.mailbox.reader_running(), zone=time_zone())
    response = Response(html, mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    response.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="Strict", secure=request.is_secure)
    return response


@status_bp.get("/health.json")
@status_bp.get("/status.json")
def health_json():
    """The page's data for machines; secrets as ***."""
    from health.collect import collect

    data = collect(_settings())
    return jsonify(data), 200


@status_bp.get("/healthz", endpoint="healthz_endpoint")
def healthz_endpoint():
    """200 "ok" when every feed is fresh and the store opens; else 503 and one reason per line."""
    from health.collect import collect, healthz

    code, lines = healthz(collect(_settings()))
    return Response("\n".join(lines) + "\n", status=code, mimetype="text/plain",
                    headers={"Cache-Control": "no-store"})


@status_bp.get("/metrics")
def metrics():
    from health.collect import collect
    from health.metrics import render_metrics

    body, content_type = render_metrics(collect(_settings()))
    return Response(body, content_type=content_type)


@status_bp.post("/health/build/<name>")
def build_now(name: str):
    """Ask the scheduler to build a feed now (forced past the guard when asked); back to the page."""
    settings = _settings()
    found = settings.find_feed(name)
    request.max_content_length = BUILD_FORM_BYTES  # the form is two short fields: a bigger body is refused unread
    if not _same_origin() or not tokens_match(request.form.get(CSRF_FIELD), request.cookies.get(CSRF_COOKIE)):
        return Response("Запрос отклонён: устаревшая страница или запрос с другого сайта. Обновите страницу "
                        "и нажмите кнопку ещё раз.\n", status=403, mimetype="text/plain")
    if found is None:
        return Response(f"Фид «{name}» не найден в конфигурации.\n", status=404, mimetype="text/plain")
    account, feed = found
    from store import open_catalog

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
    still_served = "Прежний файл продолжает раздаваться." if feed["file"]["exists"] else "Фид ещё не опубликован."
    if error and error["kind"] == "sync" and error["run_id"] > (after or 0):
        # the MoySklad sync that starts a build failed: that build never got a run of its own
        return {"feed": name, "running": False, "kind": "bad",
                "text": f"Сборка фида «{name}» не удалась: {error['title']}. {still_served}"}
    if last is None or last["run_id"] <= (after or 0):
        return {"feed": name, "running": True, "kind": "info",
                "text": f"Сборка фида «{name}» запрошена и скоро начнётся; страница обновляется сама."}
    if last["status"] == "running":
        return {"feed": name, "running": True, "kind": "info",
                "text": f"Идёт сборка №{last['number']} фида «{name}»; страница обновляется сама."}
    if last["status"] == "ok" and feed["building"]:  # published; the new pictures are being fetched for the next one
        return {"feed": name, "running": True, "kind": "info",
                "text": f"Сборка №{last['number']} фида «{name}» опубликована; догружаются новые картинки, с ними фид "
                        "будет опубликован ещё раз. Страница обновляется сама."}
    if last["status"] == "ok":
        offers = feed["last_success"]["offers"]
        return {"feed": name, "running": False, "kind": "ok",
                "text": f"Сборка №{last['number']} фида «{name}» завершена: опубликовано "
                        f"{grouped(offers)} {plural(offers, 'предложение', 'предложения', 'предложений')}."}
    return {"feed": name, "running": False, "kind": "bad",
            "text": f"Сборка №{last['number']} фида «{name}» не удалась: {error['title'] if error else last['status']}. "
                    f"{still_served}"}


def _settings():
    return current_app.config["SETTINGS"]


# --- helpers the template uses ---------------------------------------------------------------------

@status_bp.app_template_filter("when")
def when(text: str | None) -> str:
    """An ISO time as the server's local time: «29.11.2026 05:12» (the page names the zone once)."""
    if not text:
        return "—"
    return f"{dt.datetime.fromisoformat(text).astimezone():%d.%m.%Y %H:%M}"


def time_zone() -> str:
    """The server's time zone as the page names it once: «MSK, UTC+03:00» or «UTC»."""
    now = dt.datetime.now().astimezone()
    offset = now.strftime("%z")
    utc = "UTC" if offset in ("+0000", "-0000") else f"UTC{offset[:3]}:{offset[3:]}"
    name = now.tzname() or ""
    return utc if name in ("", "UTC") or name.startswith(("+", "-")) else f"{name}, {utc}"


@status_bp.app_template_filter("ago")
def ago(text: str | None) -> str:
    """How long ago: «12 мин назад»; in the future: «через 5 мин»."""
    from health.collect import duration_text

    if not text:
        return "—"
    seconds = (dt.datetime.now(dt.timezone.utc) - dt.datetime.fromisoformat(text)).total_seconds()
    if abs(seconds) < 30:
        return "только что" if seconds >= 0 else "сейчас"
    return f"{duration_text(seconds)} назад" if seconds > 0 else f"через {duration_text(-seconds)}"


@status_bp.app_template_filter("ahead")
def ahead(text: str | None) -> str:
    """When a coming run starts: «через 5 мин», or «сейчас, в очереди» once it is due."""
    from health.collect import duration_text

    if not text:
        return "—"
    seconds = (dt.datetime.fromisoformat(text) - dt.datetime.now(dt.timezone.utc)).total_seconds()
    return f"через {duration_text(seconds)}" if seconds >= 30 else "сейчас, в очереди сборок"


@status_bp.app_template_filter("duration")
def duration(seconds: float | None) -> str:
    """A duration as the page writes it: «45 с», «15 мин»."""
    from health.collect import duration_text

    return "—" if seconds is None else duration_text(seconds)


@status_bp.app_template_filter("size")
def size(value: int | None) -> str:
    if value is None:
        return "—"
    for unit, step in (("ГБ", 1 << 30), ("МБ", 1 << 20), ("КБ", 1 << 10)):
        if value >= step:
            return f"{value / step:.1f} {unit}".replace(".", ",")
    return f"{value} Б"


@status_bp.app_template_filter("number")
def number(value) -> str:
    """Thousands separated by a thin space, as Russian texts write them."""
    return "—" if value is None else grouped(value)


@status_bp.app_template_filter("plural")
def plural_filter(count, one: str, few: str, many: str) -> str:
    """The noun after a count: {{ n|number }} {{ n|plural("сборка", "сборки", "сборок") }}."""
    return plural(count or 0, one, few, many)


# The chart's geometry in viewBox units: it scales to the card's width, so labels stay legible on a phone.
CHART = {"width": 320, "height": 150, "left": 46, "right": 6, "top": 18, "bottom": 22, "font": 12}
CHART_SLOTS = 10  # bars are at least this narrow: a few builds do not make a few huge bars


@status_bp.app_template_global("bar_chart")
def bar_chart(history: list[dict], key: str, unit: str, label: str) -> Markup:
    """An SVG bar chart of the last builds, oldest on the left, with labelled axes: a round value scale, the
    first and last build numbers, the latest value; failed builds red, each bar titled with its figures."""
    c = CHART
    plot_width, plot_height = c["width"] - c["left"] - c["right"], c["height"] - c["top"] - c["bottom"]
    values = [run.get(key) or 0 for run in history]
    top = _round_up(max(values, default=0))
    gap = 2
    bar = (plot_width - gap * (max(len(values), CHART_SLOTS) - 1)) / max(len(values), CHART_SLOTS)
    base = c["top"] + plot_height
    left, right = c["left"], c["width"] - c["right"]
    parts = [f'<line class="axis" x1="{left}" y1="{base}" x2="{right}" y2="{base}" stroke="#8a94a3"/>',
             f'<line class="axis" x1="{left}" y1="{c["top"]}" x2="{left}" y2="{base}" stroke="#8a94a3"/>']
    for fraction in (0, 0.5, 1) if top else (0,):  # the scale: 0, half and the top
        y = base - fraction * plot_height
        tick = _value(top * fraction, unit)
        parts.append(f'<text class="tick" x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{tick}</text>')
        if fraction:
            parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#e3e7ec"/>')
    for index, (run, value) in enumerate(zip(history, values)):
        h = max(1.0, value / top * plot_height) if value else 1.0
        color = "#2e7d32" if run["status"] == "ok" else "#999" if run["status"] == "running" else "#c62828"
        if run["status"] in ("failed", "interrupted"):
            h = max(h, plot_height * 0.35)  # a failed build stands out even when it got no figures
        title = (f"№{run['number']} {when(run['started_at'])}: {_value(value, unit)}" if value
                 else f"№{run['number']}: {RUN_STATUSES.get(run['status'], run['status'])}")
        parts.append(f'<rect x="{left + 1 + index * (bar + gap):.1f}" y="{base - h:.1f}" width="{bar:.1f}" '
                     f'height="{h:.1f}" fill="{color}"><title>{escape(title)}</title></rect>')
    if history:
        axis = f'class="tick" y="{base + 16}"'
        parts.append(f'<text {axis} x="{left + 1}" text-anchor="start">№{history[0]["number"]}</text>')
        if len(history) > 1:
            end = left + 1 + len(history) * (bar + gap) - gap
            parts.append(f'<text {axis} x="{end:.1f}" text-anchor="end">№{history[-1]["number"]}</text>')
        latest = _value(values[-1], unit) if history[-1]["status"] == "ok" else RUN_STATUSES.get(history[-1]["status"], "")
        parts.append(f'<text class="latest" x="{right}" y="{c["top"] - 5}" text-anchor="end">'
                     f'последняя: {escape(latest)}</text>')
    summary = f"{label}: последняя {_value(values[-1], unit)}, наибольшая {_value(max(values), unit)}" if history else label
    return Markup(f'<svg class="chart" role="img" aria-label="{escape(summary)}" viewBox="0 0 {c["width"]} {c["height"]}" '
                  f'font-size="{c["font"]}" fill="#3b4656">{"".join(parts)}</svg>')


def _round_up(value: float) -> float:
    """The scale's top: the value rounded up to 1, 2, 4 or 5 times a power of ten, so its half is round too."""
    if value <= 0:
        return 0
    power = 10 ** math.floor(math.log10(value))
    return next(step * power for step in (1, 2, 4, 5, 10) if step * power >= value)


RUN_STATUSES = {"ok": "успешно", "failed": "ошибка", "running": "идёт", "interrupted": "прервана"}


def _value(value: float, unit: str) -> str:
    """A chart value with its unit: «12,3 с», «0,25 с», «1 204»."""
    if value >= 100 or value == int(value):
        text = grouped(round(value))
    else:
        text = (f"{value:.1f}" if value >= 10 else f"{value:.2f}".rstrip("0")).replace(".", ",")
    return f"{text} {unit}".strip()
