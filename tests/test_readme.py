"""The README's quick start runs as written."""
import pathlib
import re
import subprocess
import sys

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def run_example(section: str, tmp_path) -> list[str]:
    """Runs the first python block of README section `section`; returns the
    lines it printed."""
    text = README.read_text()
    code = re.search(rf"## {section}.*?```python\n(.*?)```", text, re.S).group(1)
    script = tmp_path / "example.py"
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_quick_start_runs_and_prints_what_it_says(tmp_path):
    lines = run_example("Under the hood: the Raft API", tmp_path)
    assert lines[0].startswith("committed at LogId(")
    assert lines[1] == "[None, [True, 2]]"
    assert lines[2] == "ask node 1 at node-1"
    assert lines[3] == "2"


def test_shared_secret_example_commits_and_refuses_the_intruder(tmp_path):
    lines = run_example("Securing the transport", tmp_path)
    assert lines[0].startswith("committed at LogId(")
    assert lines[1].startswith("refused:")


def test_quick_start_on_the_embedding_layer_prints_what_it_says(tmp_path):
    assert run_example("Quick start", tmp_path) == ["5", "7", "7"]
