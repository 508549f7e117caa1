"""selfcheck: its table logic on given numbers (nothing timed), its torch statements against the float64 reference,
and one end-to-end run of `python -m suite selfcheck`."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from rich.console import Console

from backends import is_available
from suite.cli import main
from suite.ops import OUTPUTS, Conv2d, Gemm
from suite.reference import compare, reference
from suite.selfcheck import (
    JAX_CHECK,
    JAX_OPTIONS,
    OVERSUBSCRIBED,
    ROUNDS,
    Comparison,
    checks,
    compare_jax,
    comparison_table,
    contention_note,
    jax_variant_label,
    noise_summary,
    run_queue_wait_s,
    torch_statement,
)

REPO = Path(__file__).resolve().parent.parent


def render(table) -> str:
    console = Console(width=200, file=io.StringIO())
    console.print(table)
    return console.file.getvalue()


def test_ratio_is_the_median_of_the_rounds_ratios_not_the_ratio_of_medians():
    comparison = Comparison("op", "forward", ours=(2e-6, 3e-6, 10e-6), theirs=(1e-6, 3e-6, 4e-6))
    assert comparison.ratios.tolist() == pytest.approx([2.0, 1.0, 2.5])
    assert comparison.ratio == pytest.approx(2.0)  # the ratio of the medians would be 3/3 = 1


def test_row_formats_times_like_the_rest_of_opbench():
    comparison = Comparison("GEMM 512³", "backward", ours=(8.153e-3, 8.2e-3, 8.1e-3), theirs=(8e-3, 8.1e-3, 8.3e-3))
    assert comparison.row() == ["GEMM 512³", "backward", "8.15 ms", "8.1 ms", "1.012", "0.976 – 1.019"]
    small = Comparison("seed-dense-1024x512", "forward", ours=(19.6e-6,), theirs=(18.2e-6,))
    assert small.row()[2:5] == ["19.6 µs", "18.2 µs", "1.077"]


def test_table_lists_every_op_with_its_ratio():
    comparisons = [Comparison("seed-conv-3x3", "forward", (31e-6, 30e-6, 29e-6), (30e-6, 30e-6, 30e-6)),
                   Comparison("conv N8", "backward_data", (1.5e-3, 1.6e-3, 1.4e-3), (1.5e-3, 1.5e-3, 1.5e-3))]
    text = render(comparison_table(comparisons, "title"))
    assert "ratio (median of 3)" in text
    assert re.search(r"seed-conv-3x3\s+│ forward\s+│\s+30 µs\s+│\s+30 µs\s+│\s+1\.000\s+│\s+0\.967 – 1\.033", text)
    assert re.search(r"conv N8\s+│ backward_data\s+│\s+1\.5 ms\s+│\s+1\.5 ms\s+│\s+1\.000\s+│\s+0\.933 – 1\.067", text)
    assert "µs" in text and "," not in text  # "30 µs", never "30,000.0 ns" or "8,153.1 µs"


def test_noise_is_the_largest_of_spread_drift_and_disagreement():
    noise, text = noise_summary([1.0e-3, 1.1e-3, 1.05e-3], [0.02, 0.03, 0.01], worst_ratio=0.04)
    assert noise == pytest.approx(0.10)  # the median drifted 10% between runs: the largest of the three
    assert "2.0%, 3.0%, 1.0% (3 runs)" in text and "moved 10.0%" in text and "about 10%" in text
    noise, _ = noise_summary([1e-3, 1e-3, 1e-3], [0.02, 0.07, 0.01], worst_ratio=0.04)
    assert noise == pytest.approx(0.07)
    noise, _ = noise_summary([1e-3, 1e-3, 1e-3], [0.02, 0.03, 0.01], worst_ratio=0.06)
    assert noise == pytest.approx(0.06)


def test_checks_cover_the_small_seed_ops_from_the_catalog():
    todo = {(check.label, check.pass_): check.op for check in checks()}
    assert todo[("seed-dense-1024x512", "forward")] == Gemm(1, 512, 1024)
    assert todo[("seed-conv-3x3", "forward")] == Conv2d(1, 3, 32, 32, 64, 3, 3, padding=(1, 1, 1, 1))
    assert ("GEMM 512³", "backward") in todo and ("conv N8 C64 28² K64 3×3", "backward_data") in todo


def test_torch_statements_compute_the_checked_op():
    """torch.utils.benchmark's statement for each check computes that op and pass (float64 reference, same inputs)."""
    pytest.importorskip("torch")
    for check in checks():
        stmt, setup, names = torch_statement(check)
        exec(setup, names)
        out = eval(stmt, names)
        parts = out if isinstance(out, tuple) else (out,)  # autograd.grad returns a tuple, the forward a tensor
        got = {name: part.detach().double().numpy() for name, part in zip(OUTPUTS[check.pass_], parts, strict=True)}
        inputs = {name: names[name].detach().numpy() for name in ("x", "w", "dy")}
        result = compare(got, reference(check.op, inputs, check.pass_), "fp32", "strict")
        assert result["status"] == "pass", (check, result)


def test_jax_check_is_resnet50_conv2_x_forward_with_and_without_the_ynnpack_conv():
    assert JAX_CHECK.op == Conv2d(16, 64, 56, 56, 64, 3, 3, padding=(1, 1, 1, 1)) and JAX_CHECK.pass_ == "forward"
    assert [jax_variant_label(options) for options in JAX_OPTIONS] == ["jax default (YNNPACK conv)",
                                                                        "jax ynn_conv=off"]


def test_the_independent_timer_is_named_in_the_table():
    comparison = Comparison("conv2_x", "forward", (50e-3,), (40e-3,))
    headers = [column.header for column in comparison_table([comparison], "t", theirs="timeit").columns]
    assert headers[2:5] == ["opbench median", "timeit median", "ratio (median of 1)"]
    assert comparison.ratio == pytest.approx(1.25)


def test_jax_statement_computes_the_conv_and_waits_for_every_call():
    """timeit's statement for JAX computes the checked conv (float64 reference on the statement's own arrays), and
    blocks on its result; run in a child process: JAX's backend must not start inside the test session (the backend
    contract tests configure its CPU pool)."""
    pytest.importorskip("jax")
    script = textwrap.dedent("""
        import json, sys
        import numpy as np
        from suite.ops import Conv2d
        from suite.reference import compare, reference
        from suite.selfcheck import Check, jax_statement
        op = Conv2d(2, 8, 10, 12, 16, 3, 3, padding=(1, 1, 1, 1))  # conv2_x's geometry, small
        stmt, setup, names = jax_statement(Check("small", op, "forward"))
        assert stmt == "jax.block_until_ready(conv(x, w))", stmt
        exec(setup, names)
        got = {"y": np.asarray(eval(stmt, names), np.float64)}
        inputs = {"x": np.asarray(names["x"]), "w": np.asarray(names["w"]), "dy": np.zeros(op.out_shape, np.float32)}
        print(json.dumps(compare(got, reference(op, inputs, "forward"), "fp32", "strict")))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["status"] == "pass"


def test_compare_jax_reads_the_child_answer_and_reports_its_failure(monkeypatch):
    calls = []

    def child(answer: str, code: int = 0, err: str = ""):
        def run(argv, **kwargs):
            calls.append((argv, kwargs))
            return subprocess.CompletedProcess(argv, code, stdout=answer, stderr=err)

        return run

    monkeypatch.setenv("PYTHONPATH", "/elsewhere")  # the child must find this checkout first, whatever is set
    monkeypatch.setattr(subprocess, "run", child('noise\n{"ours": [0.05, 0.06, 0.05], "theirs": [0.04, 0.05, 0.04], '
                                                 '"jax": "0.10.2"}\n'))
    comparison, version = compare_jax({"ynn_conv": "off"}, 2, "wall")
    assert version == "0.10.2" and comparison.pass_ == "forward"
    assert comparison.label == f"{JAX_CHECK.label}, jax ynn_conv=off"
    assert comparison.ratio == pytest.approx(1.25)
    argv, kwargs = calls[-1]
    assert argv[1:3] == ["-m", "suite.selfcheck"]
    assert json.loads(argv[3]) == {"options": {"ynn_conv": "off"}, "threads": 2, "clock": "wall"}
    assert kwargs["env"]["PYTHONPATH"].split(os.pathsep) == [str(REPO), "/elsewhere"]
    monkeypatch.setattr(subprocess, "run", child("", 1, "Traceback ...\nRuntimeError: JAX's backend already started"))
    with pytest.raises(RuntimeError, match="JAX's backend already started"):
        compare_jax({}, 2, "wall")


def test_contention_note_says_when_the_machine_was_oversubscribed():
    busy = contention_note(0.67, load=9.3, cpus=2)
    assert "waited 0.67 s per second" in busy and "load average 9.3 on 2 usable CPUs" in busy
    assert "oversubscribed" in busy
    quiet = contention_note(0.003, load=1.1, cpus=2)
    assert "waited 0.00 s per second" in quiet and "oversubscribed" not in quiet
    assert "oversubscribed" in contention_note(OVERSUBSCRIBED + 0.01, 2.0, 2)
    assert "oversubscribed" not in contention_note(OVERSUBSCRIBED, 2.0, 2)
    timed_by_cpu = contention_note(0.67, load=9.3, cpus=2, clock="cpu")
    assert "oversubscribed" not in timed_by_cpu and "CPU time" in timed_by_cpu
    assert "unknown" in contention_note(None, 2.0, 2)


def test_run_queue_wait_counts_this_process_threads():
    waited = run_queue_wait_s()
    if waited is None:
        pytest.skip("no /proc/self/task/*/schedstat here")
    assert 0 <= waited <= run_queue_wait_s()  # a monotonic total, in seconds


@pytest.mark.parametrize("argv", [["--clock", "cpu", "--threads", "2"], ["--clock", "cpu", "--device", "gpu",
                                                                         "--threads", "1"]])
def test_cpu_clock_needs_one_cpu_thread(argv, capsys):
    assert main(["selfcheck", *argv]) == 2  # refused before anything is timed
    assert "--clock cpu" in capsys.readouterr().err


@pytest.mark.slow
def test_selfcheck_end_to_end():
    proc = subprocess.run([sys.executable, "-m", "suite", "selfcheck"], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for check in checks():
        line = next((line for line in proc.stdout.splitlines() if check.label in line and f" {check.pass_} " in line),
                    None)
        assert line is not None, f"{check.label} {check.pass_} missing from\n{proc.stdout}"
        cells = re.findall(r"│\s+(\d+\.\d{3})\s+│\s+(\d+\.\d{3}) – (\d+\.\d{3})", line)
        ratio, low, high = (float(x) for x in cells[0])
        assert low <= ratio <= high
    assert f"median of {ROUNDS}" in proc.stdout
    if is_available("jax"):  # the JAX rows: timeit against opbench, both variants of XLA's conv
        assert "timeit median" in proc.stdout
        for options in JAX_OPTIONS:
            line = next((line for line in proc.stdout.splitlines() if jax_variant_label(options) in line), None)
            assert line is not None and re.search(r"│\s+\d+\.\d{3}\s+│", line), proc.stdout
    assert re.search(r"harness cost per call: [\d.]+ (ns|µs)", proc.stdout)
    assert "machine noise: IQR/median" in proc.stdout
