"""``.ci/gpu-check``, the prepared GPU check for a short lease of a GPU machine, run here so it cannot rot.

Its dry run (``OPBENCH_DEVICE=cpu``, a few smoke cases, in a copy of the checkout with opbench's metadata written as
where it is not installed) goes through every step and leaves the archive of results and report, on any machine; run
as on a GPU on a machine without an NVIDIA driver, every measuring step is refused up front and the script fails
(skipped where there is a driver, as the other GPU-sensitive tests are).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from suite.results import read_many

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / ".ci" / "gpu-check"
RESULTS = ("peak", "torch", "torch-tf32", "jax", "jax-tf32")

pytestmark = pytest.mark.slow


def checkout(tmp_path: Path) -> Path:
    """The repository's files as a fresh checkout has them (no opbench.egg-info, which an editable install leaves in
    the repository root and which Python would find there first), as the GPU machine receives them."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    copy = tmp_path / "repo"
    for name in files:
        if (REPO / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, copy / name)
    return copy


def gpu_check(tmp_path: Path, repo: Path = REPO, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OPBENCH_PYTHON": sys.executable, "OPBENCH_GPU_CHECK_DIR": str(tmp_path / "work"),
           "OUT": str(tmp_path / "out"), **env}
    return subprocess.run(["bash", str(repo / SCRIPT.relative_to(REPO))], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)


def test_the_dry_run_on_the_cpu_measures_every_step_and_archives_results_and_report(tmp_path):
    repo = checkout(tmp_path)
    done = gpu_check(tmp_path, repo, OPBENCH_DEVICE="cpu", OPBENCH_GPU_CHECK_METADATA="write")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gpu-check.log", "gpu-check.tar.gz"]
    with tarfile.open(tmp_path / "out" / "gpu-check.tar.gz") as archive:
        archive.extractall(tmp_path / "unpacked", filter="data")
    assert (tmp_path / "unpacked" / "report" / "index.html").is_file()
    for name in RESULTS:
        results = read_many([tmp_path / "unpacked" / "results" / f"{name}.jsonl"])
        ok = [m for m in results.measurements if m.status == "ok"]
        assert ok, name
        assert {m.backend for m in ok} == {name.split("-")[0].replace("peak", "torch")}
        assert {m.key.math for m in ok} == {"tf32" if name.endswith("tf32") else "strict"}, name
    log = (tmp_path / "out" / "gpu-check.log").read_text()
    assert "== selfcheck: exit 0" in log and "== report: exit 0" in log
    # The backends came from the entry points the script wrote: on PYTHONPATH they come before the installed package's.
    assert "== metadata: exit 0" in log
    found = subprocess.run([sys.executable, "-c", "import importlib.metadata as m; "
                            "print(m.entry_points(group='opbench.backends')['torch'].dist._path)"],
                           cwd=repo, env={**os.environ, "PYTHONPATH": str(tmp_path / "work" / "metadata")},
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(found).parent == tmp_path / "work" / "metadata", found


def test_as_on_a_gpu_here_every_measuring_step_is_refused_and_the_script_fails(tmp_path):
    if shutil.which("nvidia-smi"):  # there the frameworks may see the GPU: the script measures instead of refusing
        pytest.skip("this machine has an NVIDIA driver: the frameworks may see its GPU")
    done = gpu_check(tmp_path)
    assert done.returncode != 0
    log = (tmp_path / "out" / "gpu-check.log").read_text()
    assert "is a CPU-only build" in log  # torch's refusal, naming the build
    assert "sees no GPU" in log or "is CPU-only" in log  # JAX's
    assert "Traceback" not in log
    assert not list((tmp_path / "work" / "results").glob("*.jsonl"))  # a refusal writes nothing


def shadowed(tmp_path: Path, *modules: str) -> str:
    """A PYTHONPATH entry on which importing each module fails, as where its package is not installed."""
    folder = tmp_path / "not-installed"
    folder.mkdir(exist_ok=True)
    for module in modules:
        (folder / f"{module}.py").write_text('raise ImportError("not installed on this machine")\n')
    return str(folder)


def test_without_opbench_s_own_packages_it_says_which_in_one_line_and_runs_nothing(tmp_path):
    done = gpu_check(tmp_path, OPBENCH_DEVICE="cpu", PYTHONPATH=shadowed(tmp_path, "yaml", "rich", "jinja2"))
    assert done.returncode == 2, done.stdout[-2000:]
    assert done.stdout.strip().splitlines() == [
        "== packages: missing pyyaml, rich, jinja2: opbench cannot measure without pyyaml, rich; nothing run"]
    assert "Traceback" not in done.stdout + done.stderr
    assert not list((tmp_path / "work" / "results").glob("*.jsonl"))


def test_without_the_report_extras_it_measures_and_archives_everything_but_the_report(tmp_path):
    repo = checkout(tmp_path)
    done = gpu_check(tmp_path, repo, OPBENCH_DEVICE="cpu", OPBENCH_GPU_CHECK_METADATA="write",
                     PYTHONPATH=shadowed(tmp_path, "pandas", "seaborn", "jinja2"))
    assert done.returncode == 3, done.stdout[-3000:] + done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0] == ("== packages: missing pandas, seaborn, jinja2 (the report's extras): measuring and archiving "
                        "the results without the report; build it where they are installed: python -m suite report "
                        "results -o report")
    assert "== report: skipped (see packages above)" in lines and "Traceback" not in done.stdout
    with tarfile.open(tmp_path / "out" / "gpu-check.tar.gz") as archive:
        names = archive.getnames()
    assert not [name for name in names if name.startswith("report")]
    for name in RESULTS:  # every measuring step still measured
        results = read_many([tmp_path / "work" / "results" / f"{name}.jsonl"])
        assert [m for m in results.measurements if m.status == "ok"], name
        assert f"results/{name}.jsonl" in names
