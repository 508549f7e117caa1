"""No value of an environment variable outside ``suite.environment.KNOBS`` reaches a results file, a report, a
history label or ``compare``'s output: ``TF_`` is also Terraform's prefix, whose ``TF_VAR_*`` and ``TF_TOKEN_*`` hold
passwords and API tokens. A real run on one smoke case with such variables planted, then everything it produced is
searched; and a results file written before the list (its header holding them) is read back the same way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from suite import environment

REPO = Path(__file__).resolve().parent.parent
SECRET = "hunter2-secret"
PLANTED = {"TF_TOKEN_example": SECRET, "TF_VAR_password": SECRET, "TF_CLI_CONFIG_FILE": f"/home/{SECRET}/.terraformrc",
           "TORCHINDUCTOR_REDIS_HOST": f"{SECRET}.example.com", "JAX_COORDINATOR_ADDRESS": f"{SECRET}:1234"}


def suite(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "suite", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    return proc


def produced(*folders: Path) -> str:
    """Every file under the folders, as text."""
    return "\n".join(path.read_text(errors="replace") for folder in folders for path in sorted(folder.rglob("*"))
                     if path.is_file())


def test_knobs_are_exact_framework_names_and_nothing_else():
    env = {**PLANTED, "TF_ENABLE_ONEDNN_OPTS": "0", "XLA_FLAGS": "--xla_cpu_foo", "CUDA_VISIBLE_DEVICES": "1",
           "CUDA_HOME": "/opt/cuda", "TF_CONFIG": '{"cluster": {"worker": ["host:1"]}}', "HOME": "/root"}
    assert environment.knobs(env) == {"CUDA_VISIBLE_DEVICES": "1", "TF_ENABLE_ONEDNN_OPTS": "0",
                                      "XLA_FLAGS": "--xla_cpu_foo"}
    assert not [name for name in environment.RECORDED_KNOBS if not name.isupper() or name.endswith("_")]
    assert set(environment.KNOBS) >= {"torch", "tensorflow", "jax"}  # one list per framework, plus the shared libraries


@pytest.mark.slow
def test_planted_secrets_reach_no_results_file_report_history_or_compare(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("pandas")
    run = ["run", "--backend", "torch", "--catalog", "smoke", "--id", "smoke-gemm-64", "--pass", "forward",
           "--time-cap", "0.2"]
    results = tmp_path / "results"
    # Two runs that differ in one recorded knob, so the report has a history whose labels name what differs.
    first = suite(*run, "-o", str(results / "a.jsonl"), env=PLANTED)
    second = suite(*run, "-o", str(results / "b.jsonl"), env={**PLANTED, "TF_VAR_password": f"other-{SECRET}",
                                                               "OMP_WAIT_POLICY": "PASSIVE"})
    header = json.loads((results / "a.jsonl").read_text().splitlines()[0])
    assert header["record"] == "header" and "TF_TOKEN_example" not in header["environment"]["knobs"]
    report = suite("report", str(results), "-o", str(tmp_path / "report"))
    assert 'id="history"' in (tmp_path / "report" / "index.html").read_text()  # the labels were drawn
    assert "OMP_WAIT_POLICY=PASSIVE" in (tmp_path / "report" / "index.html").read_text()
    outputs = [report.stdout + report.stderr, first.stdout + first.stderr, second.stdout + second.stderr]
    for fmt in ("table", "markdown", "csv", "json"):
        done = suite("compare", str(results / "a.jsonl"), str(results / "b.jsonl"), "--format", fmt)
        outputs.append(done.stdout + done.stderr)
    assert "OMP_WAIT_POLICY" in outputs[3]  # compare names the knob that differs ...
    everything = produced(results, tmp_path / "report") + "\n".join(outputs)
    for name in PLANTED:
        assert name not in everything, name  # ... and never the others, by name or by value
    assert SECRET not in everything


@pytest.mark.slow
def test_a_results_file_written_before_the_list_shows_none_of_its_secrets(tmp_path):
    """An old header kept every TF_* variable: report, compare, show and merge read it through the same list."""
    pytest.importorskip("pandas")
    golden = REPO / "tests" / "data" / "golden" / "seed_3fw.jsonl"
    old = tmp_path / "old"
    old.mkdir()
    later = {"TF_VAR_password": f"other-{SECRET}", "OMP_WAIT_POLICY": "PASSIVE"}
    for name, created, extra in (("a", "2030-01-01", {}), ("b", "2031-01-01", later)):
        lines = []
        for line in golden.read_text().splitlines():
            record = json.loads(line)
            record["run_id"] = f"{record.get('run_id')}-{name}"
            if record["record"] == "header":
                record["environment"]["knobs"] = {**record["environment"].get("knobs", {}), **PLANTED, **extra}
                record["created"] = f"{created}T00:00:00+00:00"
            lines.append(json.dumps(record))
        (old / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    assert SECRET in (old / "a.jsonl").read_text()  # the file itself holds them: only the readers can keep them back
    outputs = [suite("report", str(old), "-o", str(tmp_path / "report")).stdout]
    outputs += [suite("compare", str(old / "a.jsonl"), str(old / "b.jsonl"), "--format", fmt).stdout
                for fmt in ("table", "json")]
    outputs += [suite("show", str(old), "--format", fmt).stdout for fmt in ("table", "json")]
    suite("merge", str(old / "a.jsonl"), "-o", str(tmp_path / "merged" / "m.jsonl"))
    assert "OMP_WAIT_POLICY" in outputs[1]
    everything = produced(tmp_path / "report", tmp_path / "merged") + "\n".join(outputs)
    assert SECRET not in everything
    for name in PLANTED:
        assert name not in everything, name
