"""The end-to-end stack: the app under gunicorn as deployed (``gunicorn -c gunicorn.conf.py wsgi:app``,
two threaded workers, the scheduler in one of them), the MoySklad emulator as a real HTTP server and
``flask feeds build`` as a second process publishing into the same data directory. All on loopback,
nothing mocked; every process started here is stopped after the test, failed or not.
"""

from __future__ import annotations

import gzip
import re
import subprocess
import sys

import pytest
import requests

from emulator.harness import EMULATOR_TOKEN, ROOT, Gunicorn, wait_for
from tests.health.test_health import page_form

FLASK = [sys.executable, "-m", "flask", "--app", "app"]
BUILD_SECONDS = 180  # one build on a loaded two-core CI machine, with room to spare


def config_text(server, moysklad: str = "", extra: str = "") -> str:
    """A config against the emulator: quick retries, one feed whose schedule never fires during a test
    (only the build at start-up), ``extra`` YAML appended (an exchange section, say)."""
    return (f"data_dir: data\nmoysklad:\n  base_url: {server.base_url}\n  token: {EMULATOR_TOKEN}\n"
            f"  retry_base_delay: 0.05\n  retry_max_delay: 0.5\n  max_retries: 8\n{moysklad}"
            f"feeds:\n  - name: main\n    pictures: none\n    interval_minutes: 600\n{extra}")


class Site:
    """One deployment as its operator and retailCRM see it: HTTP answers, the files on disk, the CLI."""

    def __init__(self, tmp_path, server, config: str, feeds_disk: str | None = None):
        self.emulator = server
        self.feeds_dir = tmp_path / "data" / "feeds"
        self.processes: list[subprocess.Popen] = []
        self.disk = None
        if feeds_disk:
            self.feeds_dir.mkdir(parents=True)
            self.disk = mount_tmpfs(self.feeds_dir, feeds_disk)
        try:
            self.gunicorn = Gunicorn(tmp_path, config, 2, deployed=True)
        except BaseException:
            self.unmount()
            raise
        self.base, self.env = self.gunicorn.base, self.gunicorn.env

    def close(self) -> None:
        try:
            for process in self.processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()
            if self.gunicorn.process.poll() is None:
                self.gunicorn.stop()
        finally:
            self.unmount()

    def unmount(self) -> None:
        if self.disk:
            subprocess.run(["umount", "--lazy", str(self.disk)], check=False)

    # --- what retailCRM and the operator see ------------------------------------------------------

    def health(self) -> dict:
        return requests.get(self.base + "/health.json", timeout=30).json()

    def feed_health(self, name: str = "main") -> dict:
        return next(feed for feed in self.health()["feeds"] if feed["name"] == name)

    def served(self, name: str = "main", encoding: str = "identity") -> bytes:
        """The feed as a client gets it, checked whole against Content-Length; gzip unpacked."""
        response = requests.get(f"{self.base}/feeds/{name}.xml", headers={"Accept-Encoding": encoding}, stream=True,
                                timeout=30)
        body = response.raw.read(decode_content=False)
        assert response.status_code == 200 and int(response.headers["Content-Length"]) == len(body), response.headers
        return gzip.decompress(body) if response.headers.get("Content-Encoding") == "gzip" else body

    def published(self, name: str = "main") -> bytes:
        return (self.feeds_dir / f"{name}.xml").read_bytes()

    def leftovers(self, name: str = "main") -> list[str]:
        return sorted(path.name for path in self.feeds_dir.glob(f".{name}.*.tmp"))

    def assert_kept(self, before: bytes, title: str) -> dict:
        """After a failed build: the old file on disk and served whole (plain and gzip), no temp files,
        the feed failing with ``title`` on the health page and /healthz; returns its health entry."""
        assert self.published() == before
        assert self.served() == before and self.served(encoding="gzip") == before
        assert not self.leftovers()
        feed = self.feed_health()
        assert feed["state"] == "failing" and feed["error"]["title"] == title, feed["error"]
        assert feed["file"]["size"] == len(before)
        reply = requests.get(self.base + "/healthz", timeout=30)
        assert reply.status_code == 503 and f"фид main: ошибка сборки — {title}" in reply.text
        return feed

    def wait_published(self, name: str = "main") -> dict:
        """The first build (the scheduler's, at start-up) published: the feed's health entry."""
        wait_for(lambda: self.feed_health(name)["last_success"], BUILD_SECONDS, f"feed {name} to be published")
        return self.feed_health(name)

    def build_now(self, name: str = "main") -> str:
        """Press «build now» on the health page and wait for the page's banner to say how it ended."""
        session = requests.Session()
        token = page_form(self.base, session, name)
        reply = session.post(f"{self.base}/health/build/{name}", data={"csrf": token}, headers={"Origin": self.base},
                             allow_redirects=False, timeout=30)
        assert reply.status_code == 303, reply.text

        def banner():
            html = session.get(self.base + reply.headers["Location"], timeout=30).text
            kind, text = re.search(r'<div class="banner (\w+)" id="build-result">([^<]*)</div>', html).groups()
            return text if kind != "info" else None

        return wait_for(banner, BUILD_SECONDS, f"the build of {name} asked for on the health page")

    # --- a second process on the same data directory ---------------------------------------------------

    def cli(self, *args: str, **popen) -> subprocess.Popen:
        """``flask --app app ARGS`` with the service's config, as an operator runs it beside gunicorn."""
        process = subprocess.Popen([*FLASK, *args], cwd=ROOT, env=self.env, text=True, **popen)
        self.processes.append(process)
        return process

    def cli_build(self, *args: str, **popen) -> subprocess.CompletedProcess:
        process = self.cli("feeds", "build", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)
        out, err = process.communicate(timeout=BUILD_SECONDS)
        return subprocess.CompletedProcess(process.args, process.returncode, out, err)

    # --- the emulator and the processes, from outside ------------------------------------------------

    def faults(self, **switches) -> None:
        """Switch emulator faults over its HTTP control API, as an out-of-process test would."""
        reply = requests.post(self.emulator.origin + "/_emulator/faults", json=switches, timeout=10)
        assert reply.status_code == 200, reply.text

    def worker_pids(self) -> list[int]:
        return self.gunicorn.worker_pids()


def mount_tmpfs(path, size: str):
    """A small tmpfs at path (root only); None when mounting is not permitted here."""
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                              capture_output=True, text=True)
    except OSError:  # no mount command
        return None
    return path if done.returncode == 0 else None


@pytest.fixture
def site(tmp_path, emulator_factory):
    """Start a deployment: ``site(products=200, seed=1, moysklad="", extra="", feeds_disk=None)``."""
    started: list[Site] = []

    def start(products: int = 200, seed: int = 1, moysklad: str = "", extra: str = "", feeds_disk: str | None = None):
        server = emulator_factory(products=products, seed=seed)
        deployment = Site(tmp_path, server, config_text(server, moysklad, extra), feeds_disk)
        started.append(deployment)
        deployment.gunicorn.wait_ready()
        return deployment

    yield start
    while started:
        started.pop().close()

