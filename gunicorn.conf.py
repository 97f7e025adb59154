"""gunicorn settings for skladbridge: ``gunicorn -c gunicorn.conf.py wsgi:app``.

Every value can be overridden on the command line or with GUNICORN_CMD_ARGS; the bind address
and worker count also with SKLADBRIDGE_BIND / SKLADBRIDGE_WORKERS (the systemd unit and the
Dockerfile set them).
"""

import json
import os
import sys

from gunicorn.glogging import Logger

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the config is read before --chdir applies
from core.gunicorn_worker import environment_number  # noqa: E402
from core.logging_setup import JsonFormatter, scrub  # noqa: E402

bind = os.environ.get("SKLADBRIDGE_BIND", "127.0.0.1:8080")

# Threaded workers: a 100 MB upload chunk from 1C, a slow retailCRM download of a big feed and
# the import polls each hold a thread, not a whole worker. Two workers are plenty on a small VPS;
# exactly one of them runs the scheduler (the others take over within 30 s if it dies).
# gthread with a deadline for the request head (core/gunicorn_worker.py): half-sent requests cannot hold the threads.
worker_class = "core.gunicorn_worker.HeadDeadlineWorker"
workers = environment_number("SKLADBRIDGE_WORKERS", 2)
threads = environment_number("SKLADBRIDGE_THREADS", 8)

# With gthread the timeout is the worker's heartbeat, not a request limit: long uploads and feed
# downloads are fine. A stuck worker is replaced after this long.
timeout = 120
graceful_timeout = 60  # a restart lets running requests (an upload chunk) finish first
keepalive = 5
# No max_requests: recycling a worker would interrupt a build running on its scheduler thread.

# Long request lines: 1C puts the file name and sessid in the query string.
limit_request_line = 8190

accesslog = "-"
errorlog = "-"
# The body size as the response declares it: gunicorn counts no bytes it hands to sendfile (a feed logged 0).
access_log_format = '%(h)s "%(r)s" %(s)s %({content-length}o)s %(M)sms "%(a)s"'


class ScrubbingLogger(Logger):
    """The access log without URL secrets (sessid, feed tokens, the webhook secret); JSON when
    SKLADBRIDGE_LOG_FORMAT=json."""

    def setup(self, cfg):
        super().setup(cfg)
        # the configured values too: a path the URL patterns miss (/feeds//<token>/main.xml, ?token=…) still
        # reaches the router, which answers it with a redirect or a 404 that names the secret
        self.secrets = _configured_secrets()
        if os.environ.get("SKLADBRIDGE_LOG_FORMAT") == "json":  # gunicorn's own lines too
            for handler in self.error_log.handlers:
                handler.setFormatter(JsonFormatter(self.secrets))

    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        for key in ("r", "U", "q", "f"):
            if isinstance(atoms.get(key), str):
                atoms[key] = scrub(atoms[key], self.secrets)
        return atoms

    def access(self, resp, req, environ, request_time):
        if os.environ.get("SKLADBRIDGE_LOG_FORMAT") != "json":
            return super().access(resp, req, environ, request_time)
        if not (self.cfg.accesslog or self.cfg.logconfig or self.cfg.syslog):
            return None
        atoms = self.atoms(resp, req, environ, request_time)
        entry = {"logger": "access", "client": atoms["h"], "request": atoms["r"], "status": atoms["s"],
                 "bytes": atoms["{content-length}o"], "ms": int(atoms["M"]), "agent": atoms["a"]}
        self.access_log.info(json.dumps(entry, ensure_ascii=False))
        return None


logger_class = ScrubbingLogger


def _configured_secrets() -> tuple[str, ...]:
    """The secrets of the configuration, for the access log: the file's, else (a reload that does not load) those
    of the configuration the workers keep serving; none when nothing loaded (on_starting says why)."""
    from core.settings import ConfigError, load_settings, secret_values, settings_for_worker

    try:
        return secret_values(load_settings())
    except ConfigError:
        held = settings_for_worker()
        return secret_values(held) if held else ()


def on_starting(server):
    """Read the configuration once in the master before any worker boots: a mistake is one line and exit 1
    (wsgi.py does the same for a gunicorn started without this file). The workers serve what was read here."""
    if not _serve_checked_config(""):
        sys.exit(1)


def on_reload(server):
    """SIGHUP (systemctl reload): the new workers serve the edited configuration when it loads. When it does not,
    the mistake is one line and they serve the one running before: a typo must not take feeds and 1C's exchange
    down, as it did when the new workers failed to load and gunicorn halted."""
    _serve_checked_config("; the reload keeps the configuration running before, fix the file and reload again")


def worker_exit(server, worker):
    """In the worker, as it exits: the scheduler it runs stops cleanly (scheduler.stop_scheduler)."""
    from scheduler import stop_scheduler

    app = getattr(worker, "wsgi", None)
    if app is not None:
        stop_scheduler(app)


def _serve_checked_config(after_error: str) -> bool:
    """Read and check the configuration in the master and hand it to the workers it forks next; False (the mistake
    printed as one line, ``after_error`` appended) when it does not load."""
    from core.settings import ConfigError, load_settings, prepare_data_dirs, serve_in_workers

    try:
        settings = load_settings()
        prepare_data_dirs(settings)
    except ConfigError as exc:
        print(f"skladbridge: config error: {exc}{after_error}", file=sys.stderr, flush=True)
        return False
    serve_in_workers(settings)
    return True
