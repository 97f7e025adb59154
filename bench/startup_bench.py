"""Start-up benchmark: ``flask --app app feeds build --help``, the wall time and peak RSS before any work.

Each figure is the best of N runs of a fresh process. Python's compiled bytecode is kept in a folder of
its own (PYTHONPYCACHEPREFIX), so the runs never write into the checkout: ``cached`` has the bytecode
of everything (a service's second start, or an image built with compileall), ``project from source``
has it for the libraries only, as a process does whose project files were never compiled (an
editable install under PYTHONDONTWRITEBYTECODE). The baseline is ``python -c "import flask.cli"``:
what Flask's own command line costs before it looks at the app. Goal: the command < 0.3 s (cached).

    python bench/startup_bench.py
    python bench/startup_bench.py --runs 10 --json
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from output import bench_parser, print_json, table_output

from emulator.harness import ROOT

COMMAND = ["-m", "flask", "--app", "app", "feeds", "build", "--help"]
BASELINE = ["-c", "import flask.cli"]
GOAL_SECONDS = 0.3


def timed(arguments: list[str], env: dict, cwd: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one run of ``python <arguments>``."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, *arguments], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)  # this child's own resource usage
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"python {' '.join(arguments)} failed with status {process.returncode}")
    return seconds, usage.ru_maxrss / 1024


def best(arguments: list[str], env: dict, cwd: Path, runs: int) -> dict:
    figures = [timed(arguments, env, cwd) for _ in range(runs)]
    return {"seconds": min(s for s, _ in figures), "runs": [round(s, 3) for s, _ in figures]}


def measure(runs: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="startup-bench-") as tmp:
        work, cache = Path(tmp), Path(tmp) / "pycache"
        (work / "config.yaml").write_text(f"data_dir: {work / 'data'}\nmoysklad:\n  token: unused\n", encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env.update(PYTHONPYCACHEPREFIX=str(cache), SKLADBRIDGE_CONFIG=str(work / "config.yaml"), PYTHONPATH=str(ROOT))
        for arguments in (COMMAND, BASELINE):  # fills the bytecode folder
            timed(arguments, env, work)
        cached = best(COMMAND, env, work, runs)
        baseline = best(BASELINE, env, work, runs)
        shutil.rmtree(cache / ROOT.relative_to(ROOT.anchor), ignore_errors=True)  # the project's bytecode only
        source = best(COMMAND, {**env, "PYTHONDONTWRITEBYTECODE": "1"}, work, runs)
        rss = timed(COMMAND, env, work)[1]
    return {"command": "flask --app app feeds build --help", "runs": runs, "seconds": cached["seconds"],
            "cached_runs": cached["runs"], "source_seconds": source["seconds"], "baseline_seconds": baseline["seconds"],
            "peak_rss_mb": rss, "goal_seconds": GOAL_SECONDS,
            "goals": {f"start-up < {GOAL_SECONDS} s": cached["seconds"] < GOAL_SECONDS}}


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    out = table_output(args)
    r = measure(args.runs)
    print(f"start-up of `{r['command']}`, best of {r['runs']} (s)", file=out)
    print(f"{'cached':>8} {'project from source':>20} {'import flask.cli':>17} {'ratio':>6} {'RSS MB':>7} {'goal':>6}", file=out)
    print(f"{r['seconds']:>8.3f} {r['source_seconds']:>20.3f} {r['baseline_seconds']:>17.3f} "
          f"{r['seconds'] / r['baseline_seconds']:>5.2f}x {r['peak_rss_mb']:>7.1f} {r['goal_seconds']:>6.1f}", file=out)
    for goal, met in r["goals"].items():
        print(f"goal {goal}: {'met' if met else 'MISSED'}", file=out)
    if args.json:
        print_json("startup", [r])


if __name__ == "__main__":
    main()
