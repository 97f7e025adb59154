# skladbridge in a container: gunicorn (web app, exchange endpoint, scheduler) on port 8080.
#
#   docker build -t skladbridge .
#   docker run -d --name skladbridge -p 8080:8080 -v skladbridge-data:/data \
#       -v $PWD/config.yaml:/etc/skladbridge/config.yaml:ro -e MOYSKLAD_TOKEN=... skladbridge
#
# Without a config file it runs the demo (the bundled MoySklad emulator). The data directory
# (/data: catalog store, feeds, pictures, uploads) is the only state; keep it on a volume.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    SKLADBRIDGE_CONFIG=/etc/skladbridge/config.yaml \
    SKLADBRIDGE_DATA_DIR=/data \
    SKLADBRIDGE_BIND=0.0.0.0:8080 \
    TZ=Europe/Moscow

# cron schedules and the health page follow TZ: the zone database makes a zone name work (slim images may lack it)
RUN apt-get update -q && apt-get install -y -q --no-install-recommends tzdata && rm -rf /var/lib/apt/lists/*
RUN useradd --system --home-dir /app --shell /usr/sbin/nologin skladbridge \
    && mkdir -p /data /etc/skladbridge && chown skladbridge /data

WORKDIR /app
COPY . .
RUN pip install -e .

USER skladbridge
VOLUME ["/data"]
EXPOSE 8080
# Alive when the app answers /healthz at all: 503 (a stale feed, MoySklad down) is the page's
# business and no reason to restart the container.
HEALTHCHECK --interval=60s --timeout=10s --start-period=60s \
    CMD python -c "import urllib.request as u, urllib.error as e; \
exec('try: u.urlopen(\"http://127.0.0.1:8080/healthz\", timeout=5)\nexcept e.HTTPError: pass')"
CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
