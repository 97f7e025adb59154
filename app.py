"""The skladbridge web application and its command line (``flask --app app ...``)."""

from __future__ import annotations

import logging

from flask import Flask

from settings import Settings, load_settings


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app from settings (by default read from SKLADBRIDGE_CONFIG / ./config.yaml)."""
    settings = settings or load_settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = Flask(__name__)
    app.config["SETTINGS"] = settings
    settings.data_dir.mkdir(parents=True, exist_ok=True)

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

    from emulator.cli import emulator_cli
    from feeds.cli import feeds_cli
    from moysklad.cli import moysklad_cli

    app.cli.add_command(moysklad_cli)
    app.cli.add_command(emulator_cli)
    app.cli.add_command(feeds_cli)
    if settings.is_demo:
        app.logger.warning("no config file: running the demo against the bundled MoySklad emulator")
    return app
