"""Entry point for gunicorn: ``gunicorn wsgi:app``.

A config mistake is printed as one line and the worker exits with gunicorn's "app failed to load"
status, so gunicorn stops (non-zero) instead of printing a traceback per worker and retrying.
"""

import sys

from app import create_app
from core.settings import ConfigError
from scheduler import start_scheduler

APP_LOAD_ERROR = 4  # gunicorn's Arbiter.APP_LOAD_ERROR: the master halts with this status

try:
    app = create_app()
except ConfigError as exc:
    print(f"skladbridge: config error: {exc}", file=sys.stderr, flush=True)
    sys.exit(APP_LOAD_ERROR)
start_scheduler(app)
