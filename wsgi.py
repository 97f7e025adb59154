"""Entry point for gunicorn: ``gunicorn wsgi:app``."""

from app import create_app
from scheduler import start_scheduler

app = create_app()
start_scheduler(app)
