"""The skladbridge web application and its command line (``flask --app app ...``)."""

from __future__ import annotations

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from logging_setup import configure_logging
from settings import Settings, load_settings


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

    from status import status_bp
    from webhooks import webhooks_bp

    app.register_blueprint(status_bp)
    app.register_blueprint(webhooks_bp)

    from feeds.web import feeds_bp
    from pictures import pictures_bp

    app.register_blueprint(feeds_bp)
    app.register_blueprint(pictures_bp)

    from exchange.web import exchange_bp

    app.register_blueprint(exchange_bp)

    from orders_api import orders_api_bp

    app.register_blueprint(orders_api_bp)

    from emulator.cli import emulator_cli
    from feeds.cli import feeds_cli
    from moysklad.cli import moysklad_cli

    app.cli.add_command(moysklad_cli)
    app.cli.add_command(emulator_cli)
    app.cli.add_command(feeds_cli)
    if settings.is_demo:
        app.logger.warning("no config file: running the demo against the bundled MoySklad emulator")
    return app
