"""Helpers the bench scripts share: options, output for bench/summary.py, gunicorn on loopback, peak RSS."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TextIO

import requests

ROOT = Path(__file__).resolve().parents[1]


def bench_parser(description: str) -> argparse.ArgumentParser:
    """Every benchmark takes --json, so bench/summary.py can collect its figures without reading tables."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true",
                        help="print the figures as one JSON object on stdout (the human table goes to stderr)")
    return parser


def table_output(args: argparse.Namespace) -> TextIO:
    """Where the human table goes: stdout, or stderr when stdout carries the JSON."""
    return sys.stderr if args.json else sys.stdout


def print_json(benchmark: str, results: list[dict], **extra) -> None:
    """The one JSON object a benchmark prints with --json: its name and one result per size (or kind) measured."""
    print(json.dumps({"benchmark": benchmark, **extra, "results": results}))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_gunicorn(config: Path, app: str, workers: int) -> tuple[subprocess.Popen, str]:
    """gunicorn on a free loopback port with SKLADBRIDGE_CONFIG=config; returns once it answers.

    Its log goes to gunicorn.log beside the config, and its tail into the error when it does not start.
    """
    port = free_port()
    log_path = config.parent / "gunicorn.log"
    with open(log_path, "ab") as log:
        server = subprocess.Popen([sys.executable, "-m", "gunicorn", "--workers", str(workers), "--bind", f"127.0.0.1:{port}", app],
                                  cwd=ROOT, env=dict(os.environ, SKLADBRIDGE_CONFIG=str(config)),
                                  stdout=subprocess.DEVNULL, stderr=log)
    base = f"http://127.0.0.1:{port}"
    for _ in range(150):
        try:
            requests.get(base + "/status.json", timeout=2)
            return server, base
        except requests.ConnectionError:
            if server.poll() is not None:
                break
            time.sleep(0.2)
    server.kill()
    raise SystemExit(f"gunicorn did not start:\n{log_path.read_text(errors='replace')[-3000:]}")


class PeakRss:
    """Peak RSS (VmHWM from /proc) of every process under the gunicorn master, sampled while they live:
    the workers, and the processes they start (an import's parser via a fork server, a build's renderers)."""

    def __init__(self, master_pid: int):
        self.master_pid = master_pid
        self.peaks: dict[int, tuple[str, float]] = {}

    def sample(self) -> None:
        for pid in self._descendants(self.master_pid):
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
            for pid in self._descendants(self.master_pid):
                Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            return False
        return True

    def largest(self, role: str) -> float:
        return max((mb for r, mb in self.peaks.values() if r == role), default=0.0)

    def of_role(self, role: str) -> list[float]:
        return sorted(mb for r, mb in self.peaks.values() if r == role)

    def _role(self, pid: int) -> str:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return "gone"
        if b"gunicorn" in command:
            return "worker"
        return "fork server" if b"forkserver" in command else "parser"

    @classmethod
    def _descendants(cls, pid: int) -> list[int]:
        try:
            children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            return []
        return children + [d for child in children for d in cls._descendants(child)]
