"""The README's main job, end to end, on the tiny smoke catalog: tox installs each framework in its own env,
measures every pass on the CPU in every variant that can be a framework's fastest there (torch NCHW and
channels_last, TensorFlow tf.function and eager, JAX with and without its YNNPACK conv fusion), records the memory
bandwidth, and builds the HTML report. This is the command a new user runs; the extra arguments after ``--`` must
compose with each env's own."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import backends
from suite.catalog import load_catalog
from suite.results import read_many

REPO = Path(__file__).resolve().parent.parent
BACKENDS = ("torch", "tensorflow", "jax")
# the passes tox's model command measures (its model_args' --pass)
MODEL_PASSES = tuple(next(line for line in (REPO / "tox.ini").read_text().splitlines() if line.startswith("model_args"))
                     .split("--pass ")[1].split()[0].split(","))


def _readme_command(kind: str) -> str:
    """The README's set-up command for the main job or the tests (the lines inside its first two bash blocks)."""
    text = (REPO / "README.md").read_text()
    blocks = [b.split("```")[0].strip() for b in text.split("```bash\n")[1:3]]
    return next(b.split("#")[0].strip() for b in blocks if b.split("#")[0].strip().endswith(kind))


def test_readme_has_exactly_the_two_commands_and_ci_runs_the_test_one():
    assert _readme_command("tox -m cpu") == "pip install tox && tox -m cpu"
    assert _readme_command("tox -m test") == "pip install tox && tox -m test"
    assert "python3 -m pip install -q tox && tox -m test" in (REPO / ".ci" / "run").read_text()


@pytest.mark.slow
def test_main_job_end_to_end_on_smoke(tmp_path):
    tox = shutil.which("tox") or (Path(sys.executable).parent / "tox")
    if not Path(tox).exists():
        pytest.skip("tox is not installed in this environment (pip install tox)")
    env = {**os.environ, "OPBENCH_RESULTS": str(tmp_path / "results"), "OPBENCH_REPORT": str(tmp_path / "report")}
    env.pop("TOX_ENV_NAME", None)
    done = subprocess.run([str(tox), "-m", "cpu", "--", "--catalog", "smoke", "--time-cap", "0.3"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=3000)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    results = read_many([tmp_path / "results" / "cpu"])
    cases = load_catalog().subset("smoke")
    # each case in the passes it has (a case's own `passes` narrow them); a whole model (tag model) in tox's model
    # command: inference and the training step
    planned = {(c.id, p) for c in cases for p in (MODEL_PASSES if "model" in c.tags else c.op.passes)
               if not c.passes or p in c.passes}
    for backend in BACKENDS:
        mine = [m for m in results.measurements if m.backend == backend]
        assert {(m.case, m.key.pass_) for m in mine} == planned, backend
        variants = {(m.case, m.key.pass_, m.key.dtype, m.key.mode, m.key.layout, m.key.options) for m in mine}
        assert len(variants) == len(mine), f"{backend}: a measurement was repeated"
        for m in mine:
            assert m.status in ("ok", "unsupported"), (backend, m.case, m.key.pass_, m.reason)
            if m.status == "ok":
                assert m.check is not None and m.check.status == "pass", (backend, m.case, m.key.pass_, m.check)
                assert m.median > 0 and len(m.block_times) >= 1
    for case in cases:  # every variant that can be a framework's fastest on a CPU: (mode, layout, options)
        layouts = {name: backends.backend_class(name).layouts[case.op.kind] for name in BACKENDS}
        ynn_off = {("jit", layouts["jax"][0], (("ynn_conv", "off"),))} if case.op.kind == "conv2d" else set()
        expected = {"torch": {("eager", layout, ()) for layout in layouts["torch"]},
                    "tensorflow": {(mode, layouts["tensorflow"][0], ()) for mode in ("function", "eager")},
                    "jax": {("jit", layouts["jax"][0], ())} | ynn_off}
        if "model" in case.tags:  # the model command: each framework's default variant only
            expected = {name: {(backends.backend_class(name).modes[0], layouts[name][0], ())} for name in BACKENDS}
        for backend in BACKENDS:
            got = {(m.key.mode, m.key.layout, m.key.options) for m in results.measurements
                   if m.backend == backend and m.case == case.id and m.key.pass_ == "forward"}
            assert got == expected[backend], (backend, case.id, got)
    assert {w.backend for w in results.workers} == set(BACKENDS)
    bandwidths = [h.environment.memory_bandwidth for h in results.headers if h.environment.memory_bandwidth]
    assert len(bandwidths) == 1 and bandwidths[0]["gbps"] > 0  # measured once, by the torch env
    assert all(w.flags.get("threads") or w.flags.get("intra_op_threads") or w.flags.get("affinity")
               for w in results.workers)
    assert all(h.networks is not None for h in results.headers)  # every run recorded its catalog's networks

    index = tmp_path / "report" / "index.html"
    assert index.exists()
    html = index.read_text()
    for backend in BACKENDS:
        assert backend in html
    for img in (tmp_path / "report").rglob("*.png"):
        assert img.stat().st_size > 1000
