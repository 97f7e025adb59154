"""Work in a child from the fork server: a service started by a script (gunicorn's, flask's) must not
run that script again in each child, as Python before 3.14 does for forkserver children."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from emulator.harness import ROOT

MAIN_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
with open({marker!r}, "a") as marker:  # what the script does at import: counted once per run of it
    marker.write("main script ran\\n")

from core.child_process import _nothing, run_in_child

def main():
    with run_in_child(_nothing, name="test child") as stream:
        print("child messages:", list(stream))

if __name__ == "__main__":
    main()
"""


def test_a_child_does_not_run_the_main_script_again(tmp_path):
    marker = tmp_path / "ran.txt"
    script = tmp_path / "service.py"
    script.write_text(textwrap.dedent(MAIN_SCRIPT.format(root=str(ROOT), marker=str(marker))), encoding="utf-8")

    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=ROOT)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "child messages: []"
    assert marker.read_text(encoding="utf-8").splitlines() == ["main script ran"]
