""".ci/duplicate_code.py, the duplicate-code check CI runs over python/ and
raftcore/: it finds a copied block (within a file or across two, whatever
the comments, docstrings and line breaks), and not code that differs."""
from __future__ import annotations

import pathlib
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).resolve().parent.parent / ".ci" / "duplicate_code.py"

BLOCK = '''
def first(items, limit):
    total = 0
    for item in items:
        if item.size > limit:
            continue
        total += max(item.size, 0)
    return total
'''


def check(*paths) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, paths)],
                          capture_output=True, text=True, timeout=60)


def test_a_block_copied_into_another_file_fails_the_check(tmp_path):
    (tmp_path / "a.py").write_text(BLOCK)
    # The copy differs in comments, a docstring and line breaks only.
    copy = BLOCK.replace("def first(items, limit):",
                         'def second(items, limit):\n    """Docstring."""')
    copy = copy.replace("max(item.size, 0)", "max(item.size,  # never below 0\n                     0)")
    (tmp_path / "b.pyx").write_text("import os\n" + copy)
    run = check(tmp_path)
    assert run.returncode == 1
    assert "b.pyx:" in run.stdout and "a.py:" in run.stdout


def test_a_block_written_twice_in_one_file_fails_the_check(tmp_path):
    (tmp_path / "a.py").write_text(BLOCK + "\n\nx = 1\n" + BLOCK.replace("first", "again"))
    assert check(tmp_path).returncode == 1


def test_code_that_differs_in_one_statement_passes(tmp_path):
    (tmp_path / "a.py").write_text(BLOCK)
    (tmp_path / "b.py").write_text(BLOCK.replace("continue", "break"))
    run = check(tmp_path)
    assert run.returncode == 0, run.stdout
