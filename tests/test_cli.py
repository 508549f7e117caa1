"""The command line: --help of every subcommand, exit codes (0 measured · 1 a measurement failed · 2 bad input ·
130 interrupted) through real runs, the flags each subcommand honours, and `report` without its extras."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

import suite.runner
from suite.catalog import SHAPES_DIR, load_catalog
from suite.checking import CheckReport
from suite.cli import COMMANDS, build_plan, main, parser, select
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


def test_every_flag_of_every_subcommand_says_what_it_does():
    """`selfcheck --threads` and the --format flags had no help text."""
    silent = [f"{name} {action.option_strings[0]}" for name, command in parser().commands.items()
              for action in command._actions if action.option_strings and not action.help]
    assert silent == []


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


# ---------------------------------------------------------------------------------------------- which cases
TEAM_CASES = """\
cases:
  - id: team-gemm
    op: gemm
    dims: {m: 16, n: 8, k: 4}
    provenance: {network: ours, layer: fc, source: our config}
"""


def selected(command: str, *argv: str) -> list[str]:
    """The case ids a command would take: `list` lists them, `run` and `check` plan them (every pass, one dtype)."""
    args = parser().parse_args([command, *argv])
    if command == "list":
        return [case.id for case in select(args)]
    return list(dict.fromkeys(task.case.id for task in build_plan(args)))


@pytest.mark.parametrize("argv", [[], ["--id", "smoke-conv-strided"], ["--tag", "seed"], ["--catalog", "smoke"],
                                  ["--op", "rnn", "--source", "DeepBench"]])
def test_list_run_and_check_select_the_same_cases(argv):
    """An --id or --tag selects from the whole catalog; --op and --source narrow; with none, all three take `quick`."""
    listed = selected("list", *argv)
    assert listed and listed == selected("run", "--backend", "torch", *argv) == selected("check", "--backend",
                                                                                          "torch", *argv)
    if not argv:
        assert listed == [case.id for case in load_catalog().subset("quick")]
    assert selected("run", "--backend", "torch", "--id", "smoke-conv-strided") == ["smoke-conv-strided"]
    quick_convs = [case.id for case in load_catalog().subset("quick") if case.op.kind == "conv2d"]
    assert selected("run", "--backend", "torch", "--op", "conv2d") == quick_convs  # narrowed, not every conv


def test_a_shapes_folder_of_ones_own_is_selected_whole(tmp_path):
    """No 'quick' in the folder's subsets: the folder's cases, not "unknown subset 'quick'"."""
    (tmp_path / "team.yaml").write_text(TEAM_CASES)
    assert selected("run", "--backend", "torch", "--shapes", str(tmp_path)) == ["team-gemm"]
    assert selected("check", "--backend", "torch", "--shapes", str(tmp_path)) == ["team-gemm"]
    assert "team-gemm" in selected("run", "--backend", "torch", "--shapes", f"bundled,{tmp_path}")
    assert selected("list", "--shapes", str(SHAPES_DIR)) == selected("list")  # the bundled folder named: `quick`


def test_help_states_which_cases_a_command_takes_without_catalog(capsys):
    assert main(["run", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Default: 'quick' for the bundled catalog with no other selection; 'all' (every case) when --id" in text
    assert "(--op and --source only narrow)" in text


@pytest.mark.slow
def test_run_measures_a_shapes_folder_given_alone(tmp_path):
    (tmp_path / "team").mkdir()
    (tmp_path / "team" / "team.yaml").write_text(TEAM_CASES)
    out = tmp_path / "r.jsonl"
    done = suite_cli("run", "--shapes", str(tmp_path / "team"), "--backend", "torch", "--time-cap", "0.2",
                     "--block-time", "0.01", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert {(m.case, m.key.pass_, m.status) for m in read_results(out).measurements} == {
        ("team-gemm", p, "ok") for p in ("forward", "backward_data", "backward_weight", "backward")}


# ---------------------------------------------------------------------------------------------- tables
def test_list_backends_prints_the_install_hint_as_written(monkeypatch, capsys):
    """Table cells are text: rich markup would print "pip install 'opbench'" for "pip install 'opbench[jax]'"."""
    import backends
    import suite.cli

    monkeypatch.setattr(suite.cli, "console", Console(width=1000))  # one line per row
    monkeypatch.setattr(backends, "is_available", lambda name: name != "jax")
    assert main(["list", "--backends"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("│ jax "))
    assert "not installed" in row and "pip install 'opbench[jax]', or run it through its tox env" in row


# ---------------------------------------------------------------------------------------------- broken pipe
@pytest.mark.parametrize("argv", [["show", str(GOLDEN), "--format", "csv"], ["list", "--format", "json"],
                                  ["list", "--catalog", "all"]])
def test_a_reader_that_went_away_stops_the_output_quietly(argv):
    """`show --format csv | head -2`: no "error: Broken pipe", no traceback; 141, as a shell gives `yes | head`."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line: every write meets a closed pipe
    try:
        done = subprocess.run([sys.executable, "-m", "suite", *argv], cwd=REPO, stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (141, "")


# ---------------------------------------------------------------------------------------------- which Python
@pytest.mark.parametrize("module, argv", [("rich", ["list"]), ("yaml", ["list"]), ("numpy", ["show", "r.jsonl"]),
                                          ("scipy", ["--help"]), ("torch", ["selfcheck"])])
def test_a_python_without_a_dependency_gets_one_line_naming_it_and_the_fix(tmp_path, module, argv):
    """`python3 -m suite` outside the tox envs: a module that fails to import is named, with the fix; no traceback."""
    shadow = tmp_path / "shadow" / module  # found first on the path; importing it fails as a missing module does
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(f"raise ModuleNotFoundError('No module named {module}', name={module!r})\n")
    path = os.pathsep.join([str(shadow.parent), str(REPO)])
    done = subprocess.run([sys.executable, "-m", "suite", *argv], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": path})
    assert done.returncode == 2 and done.stdout == "", done.stdout + done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith(f"error: this Python ({sys.executable}) has no module '{module}', which opbench "
                                  "needs: pip install -e '.[torch]' in the opbench folder"), done.stderr
    assert ".tox/torch-cpu/bin/python -m suite" in done.stderr


def test_a_backend_of_opbench_not_installed_here_says_how_to_install_it(monkeypatch, capsys):
    """From a checkout whose opbench is not installed, no entry point registers torch: say so, not 'unknown'."""
    import backends

    monkeypatch.setattr(backends, "REGISTRY", {})
    assert main(["run", "--backend", "torch", "--catalog", "smoke"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("error: backend 'torch' is not registered: opbench is not installed in this Python")
    assert "pip install -e '.[torch]'" in err


# ---------------------------------------------------------------------------------------------- progress, summary
def fake_run(records: list[dict], counts: dict[str, int]):
    """``runner.run`` reporting ``records`` for the first tasks, as a real run would, and returning ``counts``."""
    def run(tasks, out, options, report, argv=None):
        for task, record in zip(tasks, records, strict=False):
            report(task, suite.runner.measurement_of(task, record, "r1", {}))  # typed, as the runner reports it
        return counts
    return run


def test_a_contended_measurement_is_said_live_and_in_the_summary(tmp_path, monkeypatch, capsys):
    """A batch-1 dense layer timed at 15.8 ms instead of 32 µs while the machine was busy: the line and the summary
    say `contended`, not only `show` and the report."""
    busy = {"status": "ok", "stats": {"median": 15.8e-3, "flags": ["noisy", "contended"]}, "tflops": 6.6e-5,
            "check": {"status": "pass"}}
    quiet = {**busy, "stats": {"median": 32e-6, "flags": []}, "tflops": 3.3e-2}
    monkeypatch.setattr(suite.runner, "run", fake_run([busy, quiet], {"skipped_done": 0, "failed": 0, "ok": 2}))
    assert main(["run", *TINY, "--pass", "forward,backward", "-o", str(tmp_path / "r.jsonl")]) == 0
    err = capsys.readouterr().err
    lines = [" ".join(line.split()) for line in err.splitlines() if line.startswith("ok ")]
    assert lines[0].startswith("ok torch forward fp32 eager smoke-gemm-64 15.8 ms")
    assert lines[0].endswith("pass noisy contended") and "contended" not in lines[1]
    assert "1 measurement was timed while other processes took at least 25% of the usable CPUs' time (flag " \
           "contended): its time may be too slow" in " ".join(err.split())
    assert "throttled" not in err


def test_the_summary_words_what_is_not_a_status(tmp_path, monkeypatch, capsys):
    counts = {"skipped_done": 3, "failed": 0, "ok": 1, "not_started": 2}
    monkeypatch.setattr(suite.runner, "run", fake_run([], counts))
    out = tmp_path / "r.jsonl"
    assert main(["run", *TINY, "-o", str(out), "--max-run-time", "60"]) == 0
    assert " ".join(capsys.readouterr().out.split()) == f"{out}: 3 already in the file, 1 ok, 2 not started"


def test_a_case_timeout_under_a_second_is_stated_in_its_unit(monkeypatch):
    """--case-timeout 0.3 was reported as "no result within 0 s"."""
    import time

    worker = suite.runner.WorkerProcess.__new__(suite.runner.WorkerProcess)  # no process: the parts run() uses
    monkeypatch.setattr(worker, "_send", lambda message: None, raising=False)
    monkeypatch.setattr(worker, "receive", lambda timeout: time.sleep(timeout), raising=False)  # silent to the end
    assert worker.run({}, 0.3) == {"status": "timeout", "reason": "no result within 300 ms; the worker was killed"}


# ---------------------------------------------------------------------------------------------- the README's catalog
def readme_catalog(folder: Path) -> Path:
    """The README's "Your own catalog" example as a folder: its catalog file and its subsets.yaml."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Your own catalog\n"):text.index("\n## ", text.index("## Your own catalog\n") + 1)]
    cases, subsets = re.findall(r"```yaml\n(.*?)```", section, re.S)
    folder.mkdir()
    (folder / "speech.yaml").write_text(cases)
    (folder / "subsets.yaml").write_text(subsets)
    return folder


def test_the_readme_catalog_example_is_one_network_with_a_subset(tmp_path):
    """Its counts weight a network total only with a net: tag and a phase tag, which the example had not."""
    from suite.catalog import PHASES, network_sets

    folder = readme_catalog(tmp_path / "speech")
    [net] = network_sets(load_catalog([folder]).cases)
    assert (net.set, net.phase) == ("speech-train-b32", PHASES["train"])
    assert [(layer.case, layer.count, layer.first_layer) for layer in net.layers] == [
        ("speech-enc-proj", 12, False), ("speech-conv-front", 1, True)]
    assert selected("list", "--shapes", str(folder), "--catalog", "team") == ["speech-enc-proj"]


@pytest.mark.slow
def test_the_readme_catalog_example_runs_in_torch(tmp_path):
    """Its conv had an asymmetric padding, which torch records as unsupported (and `check` counts as agreeing)."""
    folder = readme_catalog(tmp_path / "speech")
    out = tmp_path / "check.jsonl"
    done = suite_cli("check", "--shapes", str(folder), "--backend", "torch", "--pass", "forward", "-o", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    assert [(m.case, m.status, m.check.status if m.check else None) for m in read_results(out).measurements] == [
        ("speech-enc-proj", "ok", "pass"), ("speech-conv-front", "ok", "pass")]


def readme_section(title: str) -> str:
    text = " ".join((REPO / "README.md").read_text().split("\n"))
    start = text.index(f"## {title} ")
    return text[start:text.index(" ## ", start + 1)]


def test_the_readme_says_which_dtype_peak_measures():
    default = parser().parse_args(["peak"]).dtype
    lines = (REPO / "README.md").read_text().splitlines()
    line = next(line for line in lines if line.startswith("python -m suite peak"))
    assert default == "fp32" and f"in {default} (--dtype" in line, line  # was "per dtype"


def test_the_readme_names_every_subset_of_the_bundled_catalog():
    text = readme_section("The catalog")
    assert [name for name in load_catalog().subsets if f"`{name}`" not in text] == []  # `all` was missing


def test_the_readme_layouts_of_a_backend_cover_every_op_kind():
    from suite.ops import OP_KINDS

    text = readme_section("Writing a backend")
    sentence = text[text.index("and `layouts` ("):text.index("Then seven methods")]
    assert [kind for kind in OP_KINDS if f"`{kind}`" not in sentence] == []  # named only gemm and conv2d
    register = text[text.index("**Register it**"):text.index("```toml")]
    assert "install it from its checkout first (`pip install -e /path/to/opbench`)" in register  # not on PyPI


def test_exclude_tag_drops_the_tagged_cases(capsys):
    """--exclude-tag drops a tag's cases from the selection (the main job runs its whole models apart)."""
    assert main(["list", "--catalog", "smoke", "--format", "json"]) == 0
    every = {row["id"] for row in json.loads(capsys.readouterr().out)}
    assert main(["list", "--catalog", "smoke", "--exclude-tag", "model", "--format", "json"]) == 0
    kept = {row["id"] for row in json.loads(capsys.readouterr().out)}
    assert {"smoke-model-resnet50", "smoke-model-bert-base"} <= every
    assert kept == every - {"smoke-model-resnet50", "smoke-model-bert-base"}
