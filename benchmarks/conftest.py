"""Builds benchmarks/_raftlog_driver.pyx on first use.

The driver cimports raftcore's .pxd files from this checkout and links, at
import, against the installed raftcore, so install raftcore from this same
checkout before running `pytest benchmarks/`. The build goes to a temporary
folder named after a hash of the driver, the .pxd files and the Cython
version: any change to them builds afresh instead of loading a driver whose
view of RaftLog's layout is stale.
"""
import contextlib
import hashlib
import importlib.util
import io
import pathlib
import tempfile

import pytest

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
DRIVER = HERE / "_raftlog_driver.pyx"


def _build_key() -> str:
    import Cython

    h = hashlib.sha256(Cython.__version__.encode())
    for path in [DRIVER, *sorted((ROOT / "raftcore").glob("*.pxd"))]:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _build_driver():
    from Cython.Build import cythonize
    from setuptools import Distribution, Extension

    out = pathlib.Path(tempfile.gettempdir()) / f"raftcore-bench-driver-{_build_key()}"
    name = "_raftlog_driver"
    built = list(out.glob(f"{name}.*.so")) if out.exists() else []
    if not built:
        out.mkdir(parents=True, exist_ok=True)
        ext = cythonize([Extension(name, [str(DRIVER)], extra_compile_args=["-O2"])],
                        include_path=[str(ROOT)], build_dir=str(out / "c"),
                        compiler_directives={"language_level": "3"}, quiet=True)
        dist = Distribution({"name": name, "ext_modules": ext})
        dist.script_args = ["build_ext", "--build-lib", str(out), "--build-temp",
                            str(out / "tmp")]
        dist.parse_command_line()
        with contextlib.redirect_stdout(io.StringIO()):
            dist.run_commands()
        built = list(out.glob(f"{name}.*.so"))
    spec = importlib.util.spec_from_file_location(name, built[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def raftlog_driver():
    return _build_driver()
