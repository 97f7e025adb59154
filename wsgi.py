"""Entry point for gunicorn: ``gunicorn wsgi:app``.

Under gunicorn.conf.py the worker serves the configuration its master read and checked (at start and at each
reload that loads). Started without it, the worker reads the file itself, and a config mistake is printed as
one line and the worker exits with gunicorn's "app failed to load" status, so gunicorn stops (non-zero)
instead of printing a traceback per worker and retrying.
"""

import sys

from app import create_app
from core.settings import ConfigError, settings_for_worker
from scheduler import start_scheduler

APP_LOAD_ERROR = 4  # gunicorn's Arbiter.APP_LOAD_ERROR: the master halts with this status

try:
    app = create_app(settings_for_worker())
except ConfigError as exc:
    print(f"skladbridge: config error: {exc}", file=sys.stderr, flush=True)
    sys.exit(APP_LOAD_ERROR)
start_scheduler(app)
