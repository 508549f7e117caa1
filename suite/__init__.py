"""opbench's framework-free harness: catalog, op specs, timing, statistics, results, workers, command line.

This file imports only the standard library: ``python -m suite`` uses it to explain a Python that lacks opbench's
dependencies, before importing any of them.
"""

from __future__ import annotations

import sys

OWN_PACKAGES = ("suite", "backends", "reports")  # a module of these missing is a bug, not a setup problem


def setup_advice() -> str:
    """How to get a Python that runs opbench (README: "Which Python")."""
    return ("pip install -e '.[torch]' in the opbench folder (extras torch, tensorflow, jax, report), or use a tox "
            "env's Python: .tox/torch-cpu/bin/python -m suite (after tox -m cpu)")


def missing_module(exc: ModuleNotFoundError) -> str | None:
    """One line naming the module this Python lacks and the fix; None when the module is opbench's own."""
    if not exc.name or exc.name.split(".")[0] in OWN_PACKAGES:
        return None
    return f"this Python ({sys.executable}) has no module {exc.name!r}, which opbench needs: {setup_advice()}"
