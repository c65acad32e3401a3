"""The README's quick start runs as written."""
import pathlib
import re
import subprocess
import sys

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_quick_start_runs_and_prints_what_it_says(tmp_path):
    text = README.read_text()
    code = re.search(r"## Quick start.*?```python\n(.*?)```", text, re.S).group(1)
    script = tmp_path / "quick_start.py"
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("committed at LogId(")
    assert lines[1] == "[None, [True, 2]]"
    assert lines[2] == "ask node 1 at node-1"
    assert lines[3] == "2"


def test_shared_secret_example_commits_and_refuses_the_intruder(tmp_path):
    text = README.read_text()
    code = re.search(r"## Securing the transport.*?```python\n(.*?)```", text, re.S).group(1)
    script = tmp_path / "secret_example.py"
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("committed at LogId(")
    assert lines[1].startswith("refused:")
