"""The command line: --help of every subcommand, exit codes (0 measured · 1 a measurement failed · 2 bad input ·
130 interrupted) through real runs, the flags each subcommand honours, and `report` without its extras."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import suite.runner
from suite.checking import CheckReport
from suite.cli import COMMANDS, build_plan, main, parser
from suite.results import Measurement, read_results

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "data" / "golden" / "smoke_torch_tf.jsonl"
TINY = ["--catalog", "smoke", "--backend", "torch", "--id", "smoke-gemm-64", "--pass", "forward"]
BAD_INDUCTOR = {"TORCHINDUCTOR_CACHE_DIR": "/dev/null/cache"}  # torch.compile cannot write its code: a real error


def suite_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "suite", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def statuses(path: Path) -> list[tuple[str, str]]:
    return [(m.key.mode, m.status) for m in read_results(path).measurements]


# ---------------------------------------------------------------------------------------------- --help
def test_top_level_help_lists_every_subcommand_and_the_exit_codes():
    done = suite_cli("--help", timeout=120)  # was a TypeError: "% of peak" in a help text
    assert done.returncode == 0 and not done.stderr, done.stderr
    listed = {line.split()[0] for line in done.stdout.splitlines() if line.startswith("    ")}
    assert set(COMMANDS) <= listed, listed
    for code in ("0 ", "1 ", "2 ", "130 "):
        assert any(line.strip().startswith(code) for line in done.stdout.splitlines()), code


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_subcommand_help_exits_0_and_states_the_exit_codes(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m suite {command}") and "exit status:" in out
    assert "failed the numerical check" in out and "usage error or bad input" in out


def test_each_subcommand_takes_only_the_flags_it_honours(capsys):
    flags = {name: {flag for action in command._actions for flag in action.option_strings}
             for name, command in parser().commands.items()}
    assert "--case-timeout" in flags["check"] and not flags["check"] & {"--resume", "--shard", "--time-cap",
                                                                         "--max-run-time", "--no-check"}
    assert "--backend" in flags["peak"] and not flags["peak"] & {"--catalog", "--pass", "--id", "--shapes"}
    assert {"--resume", "--shard", "--time-cap", "--max-run-time", "--catalog", "--pass"} <= flags["run"]
    main(["run", "--help"])
    assert "--max-run-time SECONDS" in capsys.readouterr().out  # its unit is stated


# ---------------------------------------------------------------------------------------------- exit 0 / 1
@pytest.mark.slow
def test_run_exits_0_when_everything_is_measured_and_1_when_a_measurement_failed(tmp_path):
    good = suite_cli("run", *TINY, "--time-cap", "0.2", "--block-time", "0.01", "-o", str(tmp_path / "good.jsonl"))
    assert good.returncode == 0, good.stderr
    assert statuses(tmp_path / "good.jsonl") == [("eager", "ok")]
    header = read_results(tmp_path / "good.jsonl").headers[0]
    assert header.timing["target_block_s"] == 0.01 and header.timing["max_time_s"] == 0.2

    out = tmp_path / "bad.jsonl"
    bad = suite_cli("run", *TINY, "--mode", "eager,compile", "--time-cap", "0.2", "-o", str(out), env=BAD_INDUCTOR)
    assert bad.returncode == 1, bad.stderr
    assert statuses(out) == [("eager", "ok"), ("compile", "error")]  # the run finished and kept both records
    assert "1 of 2 measurements failed" in " ".join(bad.stderr.split()) and "Traceback" not in bad.stderr

    again = suite_cli("run", *TINY, "--mode", "eager,compile", "-o", str(out), "--resume")
    assert again.returncode == 1, again.stderr  # nothing left to measure, but the file holds the failure
    assert len(statuses(out)) == 2


@pytest.mark.slow
def test_run_exits_1_on_a_timeout(tmp_path):
    out = tmp_path / "t.jsonl"
    done = suite_cli("run", *TINY, "--case-timeout", "0.001", "-o", str(out))
    assert done.returncode == 1, done.stderr
    assert statuses(out) == [("eager", "timeout")]


@pytest.mark.slow
def test_check_exits_0_when_every_backend_agrees_and_1_when_one_fails(tmp_path):
    good = suite_cli("check", *TINY)
    assert good.returncode == 0, good.stderr
    assert "1 of 1 agree" in good.stdout
    bad = suite_cli("check", *TINY, "--mode", "eager,compile", env=BAD_INDUCTOR)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "1 of 2 agree" in bad.stdout and "torch smoke-gemm-64 forward: error" in " ".join(bad.stderr.split())


@pytest.mark.slow
def test_check_and_run_exit_0_when_the_memory_guard_skips_a_case(tmp_path):
    """A case too large for this machine's memory is skipped with its reason, not failed: `check` exits as `run`."""
    shapes = tmp_path / "shapes"
    shapes.mkdir()
    prov = {"network": "test", "layer": "test", "source": "test"}
    (shapes / "cases.yaml").write_text(json.dumps({"cases": [
        {"id": "tiny", "op": "gemm", "dims": {"m": 8, "n": 8, "k": 8}, "provenance": prov},
        {"id": "huge", "op": "gemm", "dims": {"m": 2**20, "n": 2**20, "k": 8}, "provenance": prov}]}))  # terabytes
    args = ["--shapes", str(shapes), "--catalog", "all", "--backend", "torch", "--pass", "forward"]
    check = suite_cli("check", *args, "-o", str(tmp_path / "check.jsonl"))
    assert check.returncode == 0, check.stdout + check.stderr
    assert {m.case: m.status for m in read_results(tmp_path / "check.jsonl").measurements} == {"tiny": "ok",
                                                                                                "huge": "skipped"}
    assert "2 of 2 agree" in check.stdout and "huge forward: skipped: memory guard" in " ".join(check.stderr.split())
    run = suite_cli("run", *args, "--time-cap", "0.2", "-o", str(tmp_path / "run.jsonl"))
    assert run.returncode == 0, run.stderr
    assert statuses(tmp_path / "run.jsonl") == [("eager", "ok"), ("eager", "skipped")]


@pytest.mark.slow
def test_peak_exits_1_when_its_measurements_time_out(tmp_path):
    out = tmp_path / "peak.jsonl"
    done = suite_cli("peak", "--backend", "torch", "--case-timeout", "0.001", "-o", str(out))
    assert done.returncode == 1, done.stderr
    records = read_results(out).measurements
    assert records and {m.status for m in records} == {"timeout"} and {m.key.pass_ for m in records} == {"forward"}


@pytest.mark.parametrize("argv", [["run", "--backend", "nope"], ["check", "--resume"], ["peak", "--catalog", "x"],
                                  ["show", "missing.jsonl"], ["report", "missing.jsonl"], ["merge", "x", "-o", "y"],
                                  ["compare", "a", "b"], ["list", "--shapes", "missing"], ["nope"]])
def test_bad_input_exits_2_in_a_real_process_with_one_line(tmp_path, argv):
    done = subprocess.run([sys.executable, "-m", "suite", *argv], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 2 and done.stdout == "", done.stdout
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------- 130
@pytest.mark.parametrize("command", [["run", "-o", "r.jsonl"], ["check"]])
def test_ctrl_c_during_a_run_or_a_check_exits_130(tmp_path, monkeypatch, capsys, command):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(suite.runner, "run", interrupted)
    assert main([*command, *TINY]) == 130
    assert "interrupted" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- report
def test_report_names_the_extra_it_needs(tmp_path, monkeypatch, capsys):
    for name in [m for m in sys.modules if m == "reports" or m.startswith("reports.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed: importing it fails
    assert main(["report", str(GOLDEN), "-o", str(tmp_path / "r")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("error: the report needs matplotlib") and "pip install 'opbench[report]'" in err
    assert "tox -e report" in err and "Traceback" not in err


@pytest.mark.parametrize("baseline, expected", [
    ("pytorc", "--baseline 'pytorc': no measurements of that backend in these results (did you mean 'torch'?); "
               "they hold torch, tensorflow"),
    ("jax", "--baseline 'jax': no measurements of that backend in these results; they hold torch, tensorflow"),
])
def test_report_baseline_must_be_a_backend_of_the_results(tmp_path, capsys, baseline, expected):
    assert main(["report", str(GOLDEN), "--baseline", baseline, "-o", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err  # after the reader's warning that the golden file was migrated from schema 1
    assert " ".join(err.split()).endswith(f"error: {expected}") and err.count("error:") == 1
    assert not (tmp_path / "r").exists()


def test_report_output_must_be_a_folder(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert main(["report", str(GOLDEN), "-o", str(tmp_path / "file")]) == 2
    assert "cannot write the report here" in capsys.readouterr().err


def test_golden_results_are_consistent_with_their_raw_samples():
    """The reader's raw-sample checks accept what opbench writes (the golden files are real runs)."""
    for path in (REPO / "tests" / "data" / "golden").glob("*.jsonl"):
        assert read_results(path).measurements  # raises on a record its raw samples contradict


def test_a_value_named_twice_is_planned_once():
    args = parser().parse_args(["run", *TINY, "--pass", "forward,forward", "--device", "cpu,cpu", "--dtype",
                                "fp32,fp32", "--mode", "eager,default"])
    tasks = build_plan(args)
    assert len(tasks) == len({task.key for task in tasks}) == 1


@pytest.mark.parametrize("status, check, is_failure", [
    ("ok", {"status": "pass"}, False), ("ok", None, False), ("ok", {"status": "fail"}, True),
    ("unsupported", None, False), ("skipped", None, False),
    ("error", None, True), ("oom", None, True), ("timeout", None, True), ("crashed", None, True),
])
def test_which_records_make_the_exit_status_1_of_run_and_of_check_alike(status, check, is_failure):
    """One definition of failed: what the runner counts (Measurement.failed) is what makes `check` exit 1."""
    m = Measurement.from_record({"case": "c", "backend": "torch", "device": "cpu", "dtype": "fp32", "pass": "forward",
                                 "mode": "eager", "layout": "row-major", "math": "strict", "status": status,
                                 "check": check})
    ok = Measurement.from_record({**m.to_record(), "status": "ok", "check": {"status": "pass", "errors": {"y": 1e-7},
                                                                            "tolerance": 2e-5}})
    assert m.failed is is_failure
    report = CheckReport.of([ok, m])
    assert report.exit_status == int(is_failure) and report.failures == ([m] if is_failure else [])
    assert report.summary().startswith(f"{1 if is_failure else 2} of 2 agree")


def test_a_file_the_system_refuses_is_one_error_line(monkeypatch, capsys):
    import suite.cli

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "shapes/locked.yaml")

    monkeypatch.setattr(suite.cli, "load_catalog", refused)  # e.g. a folder another user owns
    assert main(["list"]) == 2
    assert capsys.readouterr().err == "error: shapes/locked.yaml: Permission denied\n"
