"""What tests and benchmarks share to run the real parts on loopback: the emulator as an HTTP
server or a process, gunicorn with a config, free ports, the processes a server started."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
EMULATOR_TOKEN = "emu-token"
EMULATOR_LOGIN = "admin@emu"
EMULATOR_PASSWORD = "emu-pass"
SHARED = ROOT.parent / "shared"  # the vendors' examples and specs, read by path (never copied)


def start_emulator(products: int = 300, seed: int = 1, **options):
    """The MoySklad emulator on a free loopback port in this process (stop it with ``.stop()``)."""
    from emulator import EmulatorServer, generate_catalog

    return EmulatorServer(generate_catalog(products=products, seed=seed), port=0, token=EMULATOR_TOKEN,
                          login=EMULATOR_LOGIN, password=EMULATOR_PASSWORD, **options).start()


def emulator_process(products: int, *, seed: int = 7, latency_ms: int = 0, token: str = EMULATOR_TOKEN,
                     startup_seconds: float = 300, other_tokens: int = 0) -> tuple[subprocess.Popen, str]:
    """The emulator as a process of its own (``flask emulator run``), so a benchmark measures only
    its client; returns the process and the API base URL once it accepts connections. With
    ``other_tokens`` it also accepts ``<token>-1`` … ``<token>-N``, each a user with its own rate limit."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "app", "emulator", "run", "--port", str(port), "--products",
         str(products), "--seed", str(seed), "--latency-ms", str(latency_ms), "--token", token,
         "--other-tokens", str(other_tokens)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def accepts() -> bool:
        if process.poll() is not None:
            raise RuntimeError("the emulator process exited before it listened")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    wait_for(accepts, startup_seconds, "the emulator to listen")
    return process, f"http://127.0.0.1:{port}/api/remap/1.2"


def client_settings(server, **overrides):
    """MoySklad settings pointing at an emulator, with short back-off so retries stay quick."""
    from core.settings import MoySkladSettings

    values = dict(base_url=server.base_url, token=EMULATOR_TOKEN, retry_base_delay=0.05, retry_max_delay=0.5,
                  read_timeout=10, connect_timeout=5)
    values.update(overrides)
    return MoySkladSettings(**values)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable, timeout: float, what: str, interval: float = 0.2):
    """Poll ``condition`` until it returns something true (which is returned); TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def child_pids(pid: int) -> list[int]:
    """The direct children of a process (Linux /proc); empty once it has ended."""
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def parent_pid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def descendant_pids(pid: int) -> list[int]:
    children = child_pids(pid)
    return children + [grandchild for child in children for grandchild in descendant_pids(child)]


def command_line(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


class Gunicorn:
    """gunicorn serving the app with a config written into ``workdir``, its log in ``workdir/gunicorn.log``.

    ``deployed`` starts it as the deployment does (``gunicorn -c gunicorn.conf.py wsgi:app``, the
    address and worker count in SKLADBRIDGE_BIND/_WORKERS); otherwise plain workers on a free port.
    ``root`` runs another checkout of the app (a benchmark's "before").
    """

    def __init__(self, workdir: Path, config_text: str, workers: int = 2, *, environ: dict | None = None,
                 deployed: bool = False, app: str = "wsgi:app", options: tuple[str, ...] = (), root: Path = ROOT):
        self.workdir = Path(workdir)
        self.data_dir = self.workdir / "data"
        self.config = self.workdir / "config.yaml"
        self.config.write_text(config_text, encoding="utf-8")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("MOYSKLAD_", "SKLADBRIDGE_", "RETAILCRM_"))}
        self.env.update(environ or {}, SKLADBRIDGE_CONFIG=str(self.config))
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        arguments = ["--workers", str(workers), "--bind", f"127.0.0.1:{self.port}", *options]
        if deployed:
            self.env.update(SKLADBRIDGE_BIND=f"127.0.0.1:{self.port}", SKLADBRIDGE_WORKERS=str(workers))
            arguments = ["-c", "gunicorn.conf.py", *options]
        self.log_path = self.workdir / "gunicorn.log"
        self.log_file = open(self.log_path, "w")
        self.process = subprocess.Popen([sys.executable, "-m", "gunicorn", *arguments, app], cwd=root, env=self.env,
                                        stdout=self.log_file, stderr=subprocess.STDOUT)
        self.started = time.monotonic()

    def wait_ready(self, timeout: float = 30) -> "Gunicorn":
        def answers() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited:\n{self.log()[-3000:]}")
            try:
                return requests.get(self.base + "/status.json", timeout=2).status_code == 200
            except (requests.ConnectionError, requests.Timeout):  # not listening yet, or slow to boot
                return False

        wait_for(answers, timeout, "gunicorn to answer")
        return self

    def stop(self) -> float:
        """Stop gracefully (a build in progress finishes); the seconds it ran."""
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log_file.close()
        return time.monotonic() - self.started

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def worker_pids(self) -> list[int]:
        return child_pids(self.process.pid)

    def scheduler_pids(self) -> list[str]:
        """The workers that started the scheduler, in order (one at a time holds it)."""
        return re.findall(r"scheduler started in process (\d+)", self.log())

    def build_lines(self, feed: str = "main") -> list[str]:
        """Every build attempt of a feed the log records, failed ones too."""
        return re.findall(rf"feed {feed}: build .*", self.log())


class PeakRss:
    """Peak RSS (VmHWM from /proc) of every process under a server, sampled while they live: the
    workers, and the processes they start (an import's parser via a fork server, a build's renderers)."""

    def __init__(self, master_pid: int):
        self.master_pid = master_pid
        self.peaks: dict[int, tuple[str, float]] = {}

    def sample(self) -> None:
        for pid in descendant_pids(self.master_pid):
            try:
                status = Path(f"/proc/{pid}/status").read_text().splitlines()
            except OSError:
                continue  # ended meanwhile
            fields = dict(line.split(":", 1) for line in status if ":" in line)
            if "VmHWM" in fields:
                self.peaks[pid] = (self._role(pid), int(fields["VmHWM"].split()[0]) / 1024)

    def reset(self) -> bool:
        """Forget the peaks so far (writing 5 to clear_refs resets VmHWM), so later samples show what came after."""
        self.peaks.clear()
        try:
            for pid in descendant_pids(self.master_pid):
                Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            return False
        return True

    def largest(self, role: str) -> float:
        return max((mb for r, mb in self.peaks.values() if r == role), default=0.0)

    def of_role(self, role: str) -> list[float]:
        return sorted(mb for r, mb in self.peaks.values() if r == role)

    @staticmethod
    def _role(pid: int) -> str:
        """worker, fork server, or parser: a process the fork server forked (an import's parser, a build's
        renderers), whose command line is the fork server's own."""
        command = command_line(pid)
        if not command:
            return "gone"
        if b"gunicorn" in command:
            return "worker"
        if b"forkserver" in command and b"forkserver" not in command_line(parent_pid(pid)):
            return "fork server"
        return "parser"
