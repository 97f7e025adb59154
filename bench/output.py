"""How every benchmark prints: a table for people, or one JSON object for bench/summary.py."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import TextIO


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


# A measured child's own peak RSS in MB. Not ru_maxrss: Linux carries the parent's peak across exec,
# so a child of a benchmark that holds an emulator's catalog would report the benchmark's size.
PEAK_RSS_MB = "max(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')) / 1024"


def run_measured(script: str, *args: str, what: str) -> dict:
    """Run a benchmark's measured part as a Python process of its own (so its peak RSS is its own);
    the script prints its figures as JSON on its last line. Exits naming ``what`` when it fails."""
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{what} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
