"""The installed package is the compiled one, and says so loudly when it is not."""
import importlib.machinery
import importlib.metadata
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest
from elftools.elf.elffile import ELFFile     # comes with auditwheel (the test extra)

import raftcore

COMPILED = ["engine", "commands", "core", "types", "messages", "log", "membership", "progress",
            "quorum", "codec", "pending_writes", "waiters", "peers", "network.reply",
            "storage.sync_worker", "testing.faulty_engine", "embed.command_apply",
            "embed.pending_call", "kv.redis.fast"]
EXT = tuple(importlib.machinery.EXTENSION_SUFFIXES)


def test_engine_modules_are_compiled_extensions():
    for name in COMPILED:
        mod = __import__(f"raftcore.{name}", fromlist=["_"])
        assert mod.__file__.endswith(EXT), f"raftcore.{name} is {mod.__file__}, not an extension"
        assert isinstance(mod.__loader__, importlib.machinery.ExtensionFileLoader)


def test_tests_use_the_installed_package_not_the_source_tree():
    pkg = pathlib.Path(raftcore.__file__).parent
    assert (pkg / "engine.pyi").exists() or any(pkg.glob("engine*.so"))
    assert not (pkg / "engine.pyx").exists(), "imported raftcore from the Cython source folder"


def test_stubs_and_py_typed_ship_with_the_package():
    pkg = pathlib.Path(raftcore.__file__).parent
    assert (pkg / "py.typed").exists()
    for name in COMPILED:
        stub = name.replace(".", "/") + ".pyi"
        assert (pkg / stub).exists(), f"missing stub {stub}"


def test_import_fails_loudly_without_the_compiled_engine(tmp_path):
    # A copy of the package with only its Python files: what a broken build leaves.
    src = pathlib.Path(raftcore.__file__).parent
    dst = tmp_path / "raftcore"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", "import raftcore"], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "compiled engine" in proc.stderr and "pip install" in proc.stderr


def raftcore_script() -> str:
    """The console script installed with the Python running the tests (a
    venv need not be activated, so PATH may name another install's)."""
    exe = os.path.join(os.path.dirname(sys.executable), "raftcore")
    assert os.access(exe, os.X_OK), f"the raftcore console script is not installed at {exe}"
    return exe


def test_bench_command_prints_a_row_per_client_count():
    exe = raftcore_script()
    proc = subprocess.run([exe, "bench", "--clients", "1,3", "--ops", "30", "--json",
                           "--no-floor"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [r["clients"] for r in out["rows"]] == [1, 3]
    assert [r["ops"] for r in out["rows"]] == [30, 90]
    assert all(r["puts_per_s"] > 0 and r["p99_us"] >= r["p50_us"] for r in out["rows"])
    assert out["peak_rss_mb"] > 0


def test_bench_command_rejects_bad_arguments():
    exe = raftcore_script()
    proc = subprocess.run([exe, "bench", "--clients", "0,x"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "--clients" in proc.stderr


def test_bench_runs_over_tcp_processes_with_the_file_store(tmp_path):
    exe = raftcore_script()
    proc = subprocess.run([exe, "bench", "--transport", "tcp", "--store", "file",
                           "--dir", str(tmp_path), "--clients", "1,4", "--ops", "20",
                           "--json", "--no-floor"], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["transport"] == "tcp" and out["store"] == "file"
    assert [r["ops"] for r in out["rows"]] == [20, 80]
    assert out["fsync_p50_us"] > 0
    # The benchmark's node processes and data directories are gone afterwards.
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------- release packaging

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_the_version_is_written_once_and_raftcore_version_prints_it():
    version = importlib.metadata.version("raftcore")
    written = re.findall(r'(?m)^version = "([^"]+)"', (REPO / "pyproject.toml").read_text())
    assert written == [version]
    assert raftcore.__version__ == version
    proc = subprocess.run([raftcore_script(), "--version"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and proc.stdout == f"raftcore {version}\n", proc


def test_the_license_is_an_spdx_expression_with_its_file():
    meta = importlib.metadata.metadata("raftcore")
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert "Apache License" in (REPO / "LICENSE").read_text()


def test_the_installed_package_holds_no_cython_sources_and_no_debug_info():
    pkg = pathlib.Path(raftcore.__file__).parent
    assert [p for ext in ("*.pyx", "*.pxd", "*.c") for p in pkg.rglob(ext)] == []
    libs = list(pkg.rglob("*.so"))
    assert len(libs) >= len(COMPILED)
    for lib in libs:
        with open(lib, "rb") as f:
            names = [s.name for s in ELFFile(f).iter_sections()]
        assert not [n for n in names if n.startswith(".debug") or n == ".symtab"], lib


def test_cibuildwheel_builds_cpython_310_to_313_for_linux_and_macos():
    exe = os.path.join(os.path.dirname(sys.executable), "cibuildwheel")

    def identifiers(platform: str) -> list[str]:
        proc = subprocess.run([exe, "--print-build-identifiers", "--platform", platform,
                               str(REPO)], cwd=REPO, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
        return sorted(proc.stdout.split())
    pythons = ["cp310", "cp311", "cp312", "cp313"]
    assert identifiers("linux") == sorted(f"{py}-{libc}_{arch}" for py in pythons
                                          for libc in ("manylinux", "musllinux")
                                          for arch in ("x86_64", "aarch64"))
    assert identifiers("macos") == sorted(f"{py}-macosx_{arch}" for py in pythons
                                          for arch in ("x86_64", "arm64"))


@pytest.mark.parametrize("portable", ["0", "1"])
def test_the_wheel_smoke_test_passes_on_the_installed_package(tmp_path, portable):
    """tests/smoke/cluster.py, which cibuildwheel and .ci/wheels.py run
    against each wheel: a 3-node FileLogStore cluster."""
    env = dict(os.environ, RAFTCORE_PORTABLE_IO=portable)
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "smoke" / "cluster.py")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    io = "portable I/O" if portable == "1" else "the platform's I/O"
    assert f"3-node FileLogStore cluster with {io}" in proc.stdout
