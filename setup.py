"""Build script: compiles the Cython engine into the `raftcore` package.

How the two source folders become one installed package:
- python/ holds the pure-Python side and is installed as the package `raftcore`
  (package_dir maps the import name onto that folder);
- raftcore/ holds the Cython sources; each raftcore/X.pyx becomes the extension
  module `raftcore.X`, installed next to the Python modules.
raftcore/ has an empty __init__.pxd (so `cimport raftcore.X` resolves) and no
__init__.py (so it is never importable itself: tests always import the
installed, compiled package). No module name may exist in both folders.
- python/X.pyx (or python/sub/X.pyx) is runtime code compiled because
  profiling says so (python/core.pyx: the runtime's per-write path;
  python/storage/sync_worker.pyx: FileLogStore's GIL-free flush thread); it
  becomes `raftcore.X` (`raftcore.sub.X`) too. It may use asyncio, logging and the clock; raftcore/ may not: the
  engine and everything beside it there stays free of I/O, time and
  randomness.

A runtime module with a .pxd (python/pending_writes.pxd) is cimported as
`raftcore.X`, which Cython looks up as raftcore/X.pxd in its include path:
the build gives it a directory holding a `raftcore` link to python/
(runtime_pxd_path), so the .pxd lives beside its .pyx.

The generated .c files are always regenerated (force=True) so a build never
picks up a stale translation of an older .pyx.

Release builds: the extensions are compiled with -O2 -g0 and linked
stripped (the wheel's .so files carry no debug info or symbol table; the
interpreter's CFLAGS may hold -g, which -g0 after it overrides). Setting
RAFTCORE_DEBUG_BUILD=1 keeps -g and the symbols, for a profiler or a
debugger. The wheel holds no Cython source (.pyx, .pxd, .c): MANIFEST.in puts
them in the sdist, and exclude_package_data keeps them out of the wheel.
"""
import glob
import os
import sys

from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def runtime_pxd_path():
    """An include directory where `raftcore` is python/ (see the docstring)."""
    path = os.path.join(HERE, "build", "runtime_pxd")
    link = os.path.join(path, "raftcore")
    if not os.path.islink(link):
        os.makedirs(path, exist_ok=True)
        os.symlink(os.path.join(os.pardir, os.pardir, "python"), link)
    return path


def build_flags():
    """(compile args, link args): a release build unless RAFTCORE_DEBUG_BUILD=1."""
    if os.environ.get("RAFTCORE_DEBUG_BUILD") == "1":
        return ["-O2", "-g"], []
    # macOS's linker strips with -S (debug info) and -x (local symbols).
    strip = ["-Wl,-S,-x"] if sys.platform == "darwin" else ["-s"]
    return ["-O2", "-g0"], strip


def extensions():
    exts = []
    compile_args, link_args = build_flags()
    sources = glob.glob(os.path.join("raftcore", "*.pyx")) + \
        glob.glob(os.path.join("python", "**", "*.pyx"), recursive=True)
    for pyx in sorted(sources):
        parts = os.path.splitext(pyx)[0].split(os.sep)[1:]
        exts.append(
            Extension(
                "raftcore." + ".".join(parts),
                [pyx],
                extra_compile_args=compile_args,
                extra_link_args=link_args,
            )
        )
    return cythonize(
        exts,
        compiler_directives={
            "language_level": "3",
            "initializedcheck": False,
            "cdivision": True,
            "embedsignature": True,
        },
        include_path=[HERE, runtime_pxd_path()],
        force=True,
        quiet=True,
    )


setup(
    # Every folder of python/ with an __init__.py is a subpackage of raftcore.
    packages=["raftcore"] + ["raftcore." + p for p in find_packages("python")],
    package_dir={"raftcore": "python"},
    package_data={"raftcore": ["py.typed", "*.pyi"], "raftcore.storage": ["*.pyi"],
                  "raftcore.network": ["*.pyi"], "raftcore.testing": ["*.pyi"],
                  "raftcore.embed": ["*.pyi"], "raftcore.kv.redis": ["*.pyi"],
                  # The status page of `raftcore kv --http`.
                  "raftcore.kv": ["status_page.html"]},
    # Cython sources are for the build (and the sdist), not for run time.
    exclude_package_data={"": ["*.pyx", "*.pxd", "*.c"]},
    ext_modules=extensions(),
    zip_safe=False,
)
