"""Lets test modules import their shared helpers (async_runner, cluster_harness,
kv_harness, proxy, ...) by name:
with --import-mode=importlib pytest does not put this folder on sys.path."""
import pathlib
import sys

_HERE = str(pathlib.Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
