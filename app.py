"""The skladbridge web application and its command line (``flask --app app ...``)."""

from __future__ import annotations

import sys

import click
from flask import Flask
from flask.cli import FlaskGroup, NoAppException
from werkzeug.middleware.proxy_fix import ProxyFix

from core.logging_setup import configure_logging
from core.settings import ConfigError, Settings, load_settings, prepare_data_dirs


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app from settings (by default read from SKLADBRIDGE_CONFIG / ./config.yaml).

    A config mistake raises :class:`ConfigError` (one line); on the command line it becomes click's
    one-line error and exit status 1 instead of a traceback.
    """
    try:
        settings = settings or load_settings()
        prepare_data_dirs(settings)
    except ConfigError as exc:
        if click.get_current_context(silent=True) is None:
            raise
        if _listing_commands():
            raise NoAppException(f"config error: {exc}") from None  # Flask prints it as one line, then its help
        raise click.ClickException(f"config error: {exc}") from None
    configure_logging(settings)
    app = Flask(__name__)
    app.config["SETTINGS"] = settings
    if settings.proxy_hops:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.proxy_hops, x_proto=settings.proxy_hops,
                                x_host=settings.proxy_hops, x_prefix=settings.proxy_hops)  # /_shard/<name>/

    from exchange.web import exchange_bp
    from feeds.web import feeds_bp
    from health.web import status_bp
    from moysklad.web import webhooks_bp
    from orders.web import orders_api_bp

    for blueprint in (status_bp, webhooks_bp, feeds_bp, exchange_bp, orders_api_bp):
        app.register_blueprint(blueprint)

    from feeds.cli import feeds_cli
    from moysklad.cli import moysklad_cli
    from retailcrm.cli import retailcrm_cli

    for group in (moysklad_cli, feeds_cli, retailcrm_cli):  # `emulator`, `shards`: pyproject.toml's flask.commands
        app.cli.add_command(group)
    if settings.is_demo:
        app.logger.warning(settings.demo_notice)
    return app


def _listing_commands() -> bool:
    """Whether Flask is listing the app's commands (``flask --app app --help``): it shows any error but
    NoAppException there with its whole traceback, and nothing in click's context tells listing apart."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "list_commands" and isinstance(frame.f_locals.get("self"), FlaskGroup):
            return True
        frame = frame.f_back
    return False
