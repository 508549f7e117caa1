"""Pluggable backends and user catalogs: entry-point discovery, broken plugins reported without breaking the rest,
the example NumPy plugin (tests/plugins/opbench-numpy) through list, check, run and report, several --shapes folders.

Broken plugins are real installed distributions: a temporary folder holding a ``*.dist-info`` (METADATA and
entry_points.txt) and the plugin modules, put on PYTHONPATH or sys.path, which is what pip leaves behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

import backends
from suite.catalog import SHAPES_DIR, load_catalog
from suite.cli import at_ranks, main

REPO = Path(__file__).resolve().parent.parent
BUILT_IN = ["torch", "tensorflow", "jax"]
FRAMEWORKS = ("torch", "tensorflow", "jax", "jaxlib")
needs_numpy_plugin = pytest.mark.skipif("numpy" not in backends.REGISTRY,
                                        reason="the example plugin is not installed: pip install -e "
                                               "tests/plugins/opbench-numpy (tox's tests env does)")

GOOD = """
from backends.base import Backend


class Ghost(Backend):
    '''Complete, but its framework is not installed.'''

    name = "ghost"
    modes = ("eager",)
    layouts = {"gemm": ("row-major",), "conv2d": ("NCHW",)}
    versions = devices = configure = tensor = step = sync = to_numpy = lambda *args: None
"""
WRONG = """
from backends.base import Backend


class NotABackend:
    name = "notabackend"


class Abstract(Backend):
    name = "abstract"
    modes = ("eager",)
    layouts = {"gemm": ("row-major",), "conv2d": ("NCHW",)}


class NoConv(Backend):
    name = "noconv"
    modes = ("eager",)
    layouts = {"gemm": ("row-major",)}
    versions = devices = configure = tensor = step = sync = to_numpy = lambda *args: None
"""
ENTRY_POINTS = """
[opbench.backends]
importfails = fake_importfails:Broken
notabackend = fake_wrong:NotABackend
abstract = fake_wrong:Abstract
noconv = fake_wrong:NoConv
ghost = fake_good:Ghost
torch = fake_wrong:Abstract
tf = fake_wrong:Abstract
moduleonly = fake_wrong

[opbench.frameworks]
importfails = json
ghost = no_such_framework_module
"""


@pytest.fixture
def fake_plugins(tmp_path: Path) -> Path:
    """An installed distribution 'fake-plugins' declaring broken and clashing backends."""
    dist = tmp_path / "fake_plugins-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-plugins\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(ENTRY_POINTS)
    (tmp_path / "fake_importfails.py").write_text("raise ImportError('libfake.so: cannot open shared object file')\n")
    (tmp_path / "fake_wrong.py").write_text(WRONG)
    (tmp_path / "fake_good.py").write_text(GOOD)
    return tmp_path


@pytest.fixture
def rediscover(monkeypatch):
    """Re-run discovery (after changing what is installed) for this test only."""

    def run() -> None:
        registry, ignored = backends.discover()
        monkeypatch.setattr(backends, "REGISTRY", registry)
        monkeypatch.setattr(backends, "IGNORED", ignored)
        backends.backend_class.cache_clear()

    yield run
    backends.backend_class.cache_clear()


def suite(*args: str, path: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(path or ""), str(REPO)]))}
    return subprocess.run([sys.executable, "-m", "suite", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)


# ---------------------------------------------------------------------------------------------- discovery
def test_built_ins_come_from_pyproject_entry_points():
    """One path: opbench's own backends are exactly the entry points its pyproject.toml declares."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]
    declared = project["opbench.backends"]
    assert list(declared) == BUILT_IN
    for name in BUILT_IN:
        entry = backends.REGISTRY[name]
        assert entry.target == declared[name] and entry.package.startswith("opbench ")
        assert entry.framework == project["opbench.frameworks"][name] == name
    assert list(backends.REGISTRY)[:3] == BUILT_IN and backends.IGNORED == []


@needs_numpy_plugin
def test_example_plugin_is_discovered_as_a_fourth_backend():
    entry = backends.REGISTRY["numpy"]
    assert (entry.target, entry.framework) == ("opbench_numpy:NumpyBackend", "numpy")
    assert entry.package.startswith("opbench-numpy ")
    assert backends.available() == [*BUILT_IN, "numpy"] and backends.problems() == []


def test_listing_imports_no_framework():
    """`list --backends` loads every backend class (for modes and layouts) but never a framework."""
    code = ("import sys; from suite.cli import main; main(['list', '--backends']); "
            f"print([m for m in {FRAMEWORKS!r} if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    assert "torch" in proc.stdout and "opbench 0.1.0" in proc.stdout


@needs_numpy_plugin
def test_list_backends_shows_four(capsys):
    assert main(["list", "--backends", "--format", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    rows = {row["backend"]: row for row in listed["backends"]}
    assert list(rows) == [*BUILT_IN, "numpy"] and listed["problems"] == []
    assert {row["status"] for row in rows.values()} == {"available"}
    assert rows["numpy"]["package"].startswith("opbench-numpy") and rows["numpy"]["framework"].startswith("numpy ")
    assert rows["numpy"]["modes"] == ["eager"] and rows["numpy"]["layouts"] == {
        "gemm": ["row-major"], "conv2d": ["NCHW"], "bgemm": ["row-major"]}  # no attention: unsupported, with a reason
    assert rows["torch"]["modes"] == ["eager", "compile"]


# ---------------------------------------------------------------------------------------------- broken plugins
def test_broken_plugins_are_reported_and_the_rest_keep_working(fake_plugins, monkeypatch, rediscover):
    monkeypatch.syspath_prepend(str(fake_plugins))
    rediscover()
    problems = "\n".join(backends.problems())
    # a clash with a built-in, an alias, and an entry point without a class: ignored, named with their package
    assert "'torch' (fake_wrong:Abstract, from package fake-plugins 1.0) is ignored: the name 'torch' is already " \
           "taken by backends.torch_backend:TorchBackend from package opbench" in problems
    assert "'tf' (fake_wrong:Abstract, from package fake-plugins 1.0) is ignored: 'tf' is an alias" in problems
    assert "'moduleonly' (fake_wrong, from package fake-plugins 1.0) is ignored: the entry point must name a " \
           "class" in problems
    # installed ones that cannot be used: each message names the plugin, its package and what is wrong
    assert "'importfails' (fake_importfails:Broken, from package fake-plugins 1.0) cannot be imported: " \
           "ImportError: libfake.so" in problems
    assert "'notabackend' (fake_wrong:NotABackend, from package fake-plugins 1.0) does not implement the backend " \
           "contract: <class 'fake_wrong.NotABackend'> is not a subclass of backends.base.Backend" in problems
    assert "'abstract' (fake_wrong:Abstract, from package fake-plugins 1.0) does not implement the backend " \
           "contract: abstract methods not implemented: configure, devices, step, sync, tensor, to_numpy, " \
           "versions" in problems
    assert "'noconv' (fake_wrong:NoConv, from package fake-plugins 1.0) does not implement the backend contract: " \
           "layouts must map each of gemm, conv2d" in problems
    assert backends.REGISTRY["torch"].target == "backends.torch_backend:TorchBackend"
    # the working backends stay available; the ghost's framework is missing, found without importing anything
    assert backends.available()[:3] == BUILT_IN
    assert not set(backends.available()) & {"importfails", "notabackend", "abstract", "noconv", "ghost"}
    assert not backends.is_available("ghost") and backends.backend_class("ghost").name == "ghost"
    with pytest.raises(backends.BackendUnavailable, match=r"needs the 'no_such_framework_module' module, which is "
                       r"not installed in this environment \(install the package that provides"):
        backends.load("ghost")


def test_cli_with_broken_plugins_installed(fake_plugins):
    """Through `python -m suite`: the listing warns and goes on; naming a broken plugin is a usage error."""
    table = suite("list", "--backends", path=fake_plugins)
    assert table.returncode == 0, table.stderr
    assert "warning: backend plugin 'importfails' (fake_importfails:Broken, from package fake-plugins 1.0) cannot " \
           "be imported: ImportError" in table.stderr
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in table.stdout.splitlines() if "│" in line]
    status = {row[0]: row[2] for row in rows if row[0]}  # backend -> status (wrapped cells leave row[0] empty)
    assert status == {**dict.fromkeys(BUILT_IN, "available"), "importfails": "broken", "notabackend": "broken",
                      "abstract": "broken", "noconv": "broken", "ghost": "not installed",
                      **({"numpy": "available"} if "numpy" in backends.REGISTRY else {})}
    run = suite("run", "--backend", "importfails", "--catalog", "smoke", "-o", str(fake_plugins / "out.jsonl"),
                path=fake_plugins)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip() == "error: backend plugin 'importfails' (fake_importfails:Broken, from package " \
                                 "fake-plugins 1.0) cannot be imported: ImportError: libfake.so: cannot open " \
                                 "shared object file"
    assert not (fake_plugins / "out.jsonl").exists()


@needs_numpy_plugin
def test_without_the_plugin_the_three_built_ins_are_untouched(monkeypatch, rediscover):
    """As after `pip uninstall opbench-numpy`: its entry points are gone, nothing else changes."""
    before = {name: entry for name, entry in backends.REGISTRY.items() if name != "numpy"}
    installed = backends.entry_points
    monkeypatch.setattr(backends, "entry_points", lambda group: [
        ep for ep in installed(group=group) if not (ep.dist and ep.dist.metadata["Name"] == "opbench-numpy")])
    rediscover()
    assert before == backends.REGISTRY and list(before) == BUILT_IN
    assert backends.available() == BUILT_IN and backends.problems() == []
    with pytest.raises(backends.BackendUnavailable, match="unknown backend 'numpy'; known: torch, tensorflow, jax"):
        backends.canonical("numpy")


# ---------------------------------------------------------------------------------------------- several catalogs
TEAM = """
defaults:
  tags: [team]
  provenance: {network: our speech model, source: our training config}
cases:
  - id: team-gemm
    op: gemm
    dims: {m: 96, n: 64, k: 32}
    provenance: {layer: encoder projection}
"""


def team_folder(tmp_path: Path, cases: str = TEAM, subsets: str | None = None) -> Path:
    folder = tmp_path / "team-shapes"
    folder.mkdir(parents=True)
    (folder / "team.yaml").write_text(cases)
    if subsets:
        (folder / "subsets.yaml").write_text(subsets)
    return folder


def listed(capsys, *args: str) -> list[dict[str, Any]]:
    assert main(["list", "--format", "json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_several_shapes_folders_make_one_catalog(tmp_path, capsys):
    team = team_folder(tmp_path, subsets="subsets:\n  team:\n    description: our layers\n    tags: [team]\n")
    bundled = load_catalog()
    ids = [row["id"] for row in listed(capsys, "--shapes", f"bundled,{team}")]
    assert ids == [at_ranks(case, 2).id for case in bundled.cases] + ["team-gemm"]  # all-reduces at --ranks 2
    assert [row["id"] for row in listed(capsys, "--shapes", str(SHAPES_DIR), "--shapes", str(team),
                                        "--catalog", "team")] == ["team-gemm"]
    assert [row["id"] for row in listed(capsys, "--shapes", "bundled", "--shapes", str(team), "--catalog",
                                        "smoke")] == [case.id for case in bundled.subset("smoke")]
    assert [row["id"] for row in listed(capsys, "--shapes", str(team))] == ["team-gemm"]  # alone: replaces
    subsets = {row["subset"] for row in listed(capsys, "--subsets", "--shapes", f"bundled,{team}")}
    assert {"team", "smoke", "quick", "all"} <= subsets


def test_duplicates_across_folders_name_both_files(tmp_path, capsys):
    team = team_folder(tmp_path, TEAM.replace("team-gemm", "smoke-gemm-64"))
    assert main(["list", "--shapes", f"bundled,{team}"]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {team / 'team.yaml'}: id 'smoke-gemm-64', field "
                                               f"'id': duplicate id; first defined in {SHAPES_DIR / 'smoke.yaml'}")
    folder = team_folder(tmp_path / "b", subsets="subsets:\n  smoke:\n    description: ours\n    tags: [team]\n")
    assert main(["list", "--subsets", "--shapes", "bundled", "--shapes", str(folder)]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {folder / 'subsets.yaml'}: subset 'smoke': duplicate "
                                               f"subset; first defined in {SHAPES_DIR / 'subsets.yaml'}")


def test_a_folder_named_twice_loads_once(capsys):
    assert listed(capsys, "--shapes", f"bundled,{SHAPES_DIR}") == listed(capsys)


# ---------------------------------------------------------------------------------------------- end to end
@needs_numpy_plugin
@pytest.mark.slow
def test_example_plugin_through_check_run_and_report(tmp_path):
    """The plugin like any backend: `check` passes on the smoke catalog, `run` measures it beside torch, and the
    report shows it."""
    check = suite("check", "--catalog", "smoke", "--backend", "numpy")
    assert check.returncode == 0, check.stdout + check.stderr
    assert " 0 mismatched or failed" in check.stdout

    out = tmp_path / "numpy.jsonl"
    run = suite("run", "--catalog", "smoke", "--id", "smoke-gemm-64", "--id", "smoke-conv-strided", "--backend",
                "numpy,torch", "--pass", "forward,backward", "--dtype", "fp32,bf16", "--time-cap", "0.2", "-o",
                str(out))
    assert run.returncode == 0, run.stdout + run.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    worker = next(r for r in records if r["record"] == "worker" and r["backend"] == "numpy")
    assert worker["flags"]["fp32_math"] == "ieee" and worker["flags"]["threads"] >= 1
    assert worker["package"] == backends.REGISTRY["numpy"].package
    assert worker["versions"]["numpy"] and worker["versions"]["blas"]
    mine = [r for r in records if r["record"] == "measurement" and r["backend"] == "numpy"]
    assert len(mine) == 2 * 2 * 2
    for record in mine:
        if record["dtype"] == "bf16":
            assert record["status"] == "unsupported" and "bfloat16" in record["reason"]
        else:
            assert record["status"] == "ok" and record["check"]["status"] == "pass" and record["stats"]["median"] > 0
            assert record["details"]["algorithm"]

    report = suite("report", str(out), "-o", str(tmp_path / "report"))
    assert report.returncode == 0, report.stdout + report.stderr
    measurements = json.loads((tmp_path / "report" / "data" / "measurements.json").read_text())
    assert {m["backend"] for m in measurements} == {"numpy", "torch"}
    assert "numpy" in (tmp_path / "report" / "index.html").read_text()
