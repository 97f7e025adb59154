"""The skladbridge web application and its command line (``flask --app app ...``)."""

from __future__ import annotations

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from core.logging_setup import configure_logging
from core.settings import Settings, load_settings


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app from settings (by default read from SKLADBRIDGE_CONFIG / ./config.yaml)."""
    settings = settings or load_settings()
    configure_logging(settings)
    app = Flask(__name__)
    app.config["SETTINGS"] = settings
    if settings.proxy_hops:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.proxy_hops, x_proto=settings.proxy_hops,
                                x_host=settings.proxy_hops)
    for account in settings.every_account():
        account.data_dir.mkdir(parents=True, exist_ok=True)

    from exchange.web import exchange_bp
    from feeds.web import feeds_bp
    from health.web import status_bp
    from moysklad.web import webhooks_bp
    from orders.web import orders_api_bp

    for blueprint in (status_bp, webhooks_bp, feeds_bp, exchange_bp, orders_api_bp):
        app.register_blueprint(blueprint)

    from emulator.cli import emulator_cli
    from feeds.cli import feeds_cli
    from moysklad.cli import moysklad_cli
    from retailcrm.cli import retailcrm_cli

    for group in (moysklad_cli, emulator_cli, feeds_cli, retailcrm_cli):
        app.cli.add_command(group)
    if settings.is_demo:
        app.logger.warning("no config file: running the demo against the bundled MoySklad emulator")
    return app
