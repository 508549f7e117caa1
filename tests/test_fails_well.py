"""Fails well, without frameworks: every user mistake gets one clear message and exit 2, the catalog loader and
results reader never raise anything but their own errors, crashes mid-write lose nothing, schemas migrate."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import suite.results as results_mod
from suite.catalog import CatalogError, load_catalog, load_file
from suite.cli import main
from suite.ops import Conv2d, Gemm
from suite.results import ResultsError, ResultSet, ResultsWriter, read_results
from suite.timing import TimingConfig
from suite.worker import run_task

REPO = Path(__file__).resolve().parent.parent
PROV = {"network": "Net", "layer": "fc", "source": "paper"}
GEMM = {"id": "g", "op": "gemm", "dims": {"m": 4, "n": 8, "k": 16}, "provenance": PROV}
CONV = {"id": "c", "op": "conv2d", "provenance": PROV,
        "dims": {"n": 1, "c": 4, "h": 9, "w": 7, "k": 8, "r": 3, "s": 3, "stride": 1, "padding": 1, "groups": 2}}
HEADER = {"record": "header", "run_id": "r1"}


def measurement(case: str = "c1", **extra: Any) -> dict[str, Any]:
    return {"record": "measurement", "run_id": "r1", "case": case, "backend": "torch", "device": "cpu",
            "dtype": "fp32", "pass": "forward", "mode": "eager", "layout": "NCHW", "math": "strict",
            "threads": 2, "options": {}, "status": "ok", **extra}


def catalog_dir(tmp_path: Path, *entries: dict[str, Any], text: str | None = None) -> Path:
    folder = tmp_path / "shapes"
    folder.mkdir(exist_ok=True)
    (folder / "cases.yaml").write_text(text if text is not None else yaml.safe_dump({"cases": list(entries)}))
    return folder


def one_error(capsys: pytest.CaptureFixture[str], code: int) -> str:
    """The run exited 2 with exactly one `error:` message and no traceback; the message, whitespace joined."""
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert err.startswith("error: ") and err.count("error:") == 1 and "Traceback" not in out + err, err
    return " ".join(err.split())


# ---------------------------------------------------------------------------------------------- command line
@pytest.mark.parametrize("argv, expected", [
    (["--backend", "nope"], "unknown backend 'nope'; choose from torch, tensorflow, jax"),
    (["--backend", "torhc"], "unknown backend 'torhc' (did you mean 'torch'?)"),
    (["--backend", ","], "--backend needs at least one value"),
    (["--dtype", "fp64"], "unknown dtype 'fp64'"),
    (["--dtype", "fp33"], "unknown dtype 'fp33' (did you mean 'fp32'?); choose from fp32, fp16, bf16"),
    (["--pass", "sideways"], "unknown pass 'sideways'; choose from forward"),
    (["--pass", "forwrd"], "(did you mean 'forward'?)"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--catalog", "nope"], "unknown subset 'nope'"),
    (["--catalog", "quik"], "unknown subset 'quik' (did you mean 'quick'?)"),
    (["--id", "no-such-case*"], "no case matches the selection"),
    (["--mode", "sideways"], "unknown mode 'sideways'; choose from eager, compile (or 'default' or 'all')"),
    (["--mode", "eagr"], "(did you mean 'eager'?)"),
    (["--layout", "nchw"], "unknown layout 'nchw' (did you mean 'NCHW'?)"),
    (["--layout", "NHWC"], "choose from row-major, NCHW, channels_last, BHLD"),  # torch has no NHWC
    (["--time-cap", "0"], "--time-cap must be a positive number"),
    (["--time-cap", "nan"], "--time-cap must be a positive number"),
    (["--block-time", "0"], "--block-time must be a positive number"),
    (["--case-timeout", "-1"], "--case-timeout must be a positive number"),
    (["--max-run-time", "0"], "--max-run-time must be a positive number"),
    (["--threads", "0"], "--threads must be a positive number"),
    (["--threads", "two"], "argument --threads: invalid int value: 'two'"),
    (["--shard", "3/2"], "I must be between 1 and N"),
    (["--shard", "half"], "--shard takes I/N"),
    (["--option", "novalue"], "--option takes KEY=VALUE"),
    (["--op", "gem"], "invalid choice: 'gem'"),
    (["--op", "gem"], "(did you mean 'gemm'?)"),
    (["--math", "tf16"], "argument --math: invalid choice: 'tf16'"),
    (["--catalg", "smoke"], "unrecognized arguments: --catalg smoke (did you mean '--catalog'?)"),
    (["--frobnicate"], "unrecognized argument: --frobnicate (see python -m suite run --help)"),
    (["extra-positional"], "unrecognized argument: extra-positional"),
])
def test_run_mistakes_exit_2_with_one_message(tmp_path, capsys, argv, expected):
    code = main(["run", "--catalog", "smoke", "--backend", "torch", "-o", str(tmp_path / "r.jsonl"), *argv])
    assert expected in one_error(capsys, code)
    assert not (tmp_path / "r.jsonl").exists()


@pytest.mark.parametrize("argv, nothing", [
    (["--id", "no-such-case*"], "no case matches the selection"),
    (["--layout", "COO", "--op", "gemm"], "the selection gives nothing to run: no chosen backend offers --mode "
                                          "default with --layout COO"),
    (["--op", "gemm", "--pass", "step"], "no selected case has --pass step"),
])
def test_skip_empty_makes_nothing_to_run_a_note_and_exit_0(tmp_path, capsys, argv, nothing):
    """tox's variant commands narrow whatever catalog they are given: one a catalog has no case for is a note. Any
    other mistake is still an error."""
    base = ["run", "--catalog", "smoke", "--backend", "torch", "-o", str(tmp_path / "r.jsonl"), *argv]
    assert nothing in one_error(capsys, main(base))
    assert main([*base, "--skip-empty"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert out.startswith("nothing to run, skipped (--skip-empty): ") and nothing in out
    assert not (tmp_path / "r.jsonl").exists()
    assert "unknown dtype 'fp64'" in one_error(capsys, main([*base, "--skip-empty", "--dtype", "fp64"]))


@pytest.mark.parametrize("argv, expected", [
    ([], "the following arguments are required: command"),
    (["lst"], "invalid choice: 'lst'"),
    (["lst"], "(did you mean 'list'?)"),
    (["check", "--resume"], "--resume is an option of run, peak, not of check"),
    (["check", "--time-cap", "1"], "--time-cap is an option of run, peak, not of check"),
    (["check", "--shard", "1/2"], "--shard is an option of run, peak, not of check"),
    (["check", "--max-run-time", "5"], "--max-run-time is an option of run, peak, not of check"),
    (["check", "--catalog", "smoke", "--case-timeout", "0"], "--case-timeout must be a positive number"),
    (["peak", "--catalog", "quick"], "--catalog is an option of list, run, check, not of peak"),
    (["peak", "--pass", "forward"], "--pass is an option of run, check, not of peak"),
    (["list", "--catalog", "smoke", "--backend", "torch"], "--backend is an option of"),
    (["show"], "the following arguments are required: results"),
    (["merge", "a.jsonl"], "the following arguments are required: -o/--output"),
    (["report", "nowhere.jsonl"], "nowhere.jsonl: no such results file or folder"),
    (["selfcheck", "--threads", "x"], "argument --threads: invalid int value: 'x'"),
    (["selfcheck", "--threads", "0"], "--threads must be a positive number, got 0"),
    (["run", "--catalog", "smoke", "--seed", "-1"], "--seed must be an integer >= 0"),
    (["run", "--catalog", "smoke", "--backend", "torch", "-o", ""], "is a folder; -o takes a results file"),
])
def test_mistakes_of_every_subcommand_exit_2_with_one_message(tmp_path, capsys, monkeypatch, argv, expected):
    monkeypatch.chdir(tmp_path)
    assert expected in one_error(capsys, main(argv))
    assert not list(tmp_path.iterdir())  # nothing written


def test_output_that_is_a_folder_or_unwritable(tmp_path, capsys):
    code = main(["run", "--catalog", "smoke", "--backend", "torch", "-o", str(tmp_path)])
    assert "is a folder" in one_error(capsys, code)
    (tmp_path / "file").write_text("")
    code = main(["run", "--catalog", "smoke", "--backend", "torch", "-o", str(tmp_path / "file" / "r.jsonl")])
    assert "cannot write results here" in one_error(capsys, code)


@pytest.mark.parametrize("entry, expected", [
    ({**GEMM, "dims": {"m": 0, "n": 8, "k": 16}}, "field 'dims.m': must be an integer >= 1, got 0"),
    ({**GEMM, "dims": {"m": -3, "n": 8, "k": 16}}, "field 'dims.m': must be an integer >= 1, got -3"),
    ({**GEMM, "dims": {"m": "4", "n": 8, "k": 16}}, "field 'dims.m': must be an integer >= 1, got '4'"),
    ({**GEMM, "dims": [4, 8, 16]}, "field 'dims': must be a mapping"),
    ({**GEMM, "op": "matmul"}, "unknown op 'matmul'"),
    ({**GEMM, "op": ["gemm"]}, "unknown op ['gemm']"),  # was a TypeError: unhashable list
    ({**GEMM, "flops": 3}, "field 'flops': unknown key"),
    ({**GEMM, "dims": {"m": 4, "n": 8, "k": 16, "batch": 2}}, "field 'dims.batch': unknown key"),
    ({**GEMM, "tags": 5}, "field 'tags': must be a list of non-empty strings"),  # was a TypeError
    ({**GEMM, "tags": "abc"}, "field 'tags': must be a list of non-empty strings"),
    ({**CONV, "dims": {**CONV["dims"], "r": 30}}, "does not fit the padded"),
    ({**CONV, "dims": {**CONV["dims"], "stride": 0}}, "field 'dims.stride': must be an integer >= 1"),
    ({**CONV, "dims": {**CONV["dims"], "groups": 3}}, "must be divisible by groups=3"),
    ({**CONV, "dims": {**CONV["dims"], "padding": -1}}, "field 'dims.padding': must be an integer >= 0"),
    ({**GEMM, "dims": {"m": 4.5, "n": 8, "k": 16}}, "field 'dims.m': must be an integer >= 1, got 4.5"),
    ({**GEMM, "dims": {"m": True, "n": 8, "k": 16}}, "field 'dims.m': must be an integer >= 1, got True"),
    ({**GEMM, "dims": {"m": 99999999999999999999, "n": 8, "k": 16}},
     "field 'dims.m': 99999999999999999999 is beyond int64 (2**63 - 1): no framework can index it"),
    ({**GEMM, "dims": {"m": 2**32, "n": 2**32, "k": 2}},  # each dim fits; the m×n output does not
     "field 'dims': the output tensor 4294967296×4294967296 has 1.84e+19 elements, beyond int64"),
    ({**CONV, "dims": {**CONV["dims"], "n": 2**16, "c": 2**16, "h": 2**16, "w": 2**16, "groups": 1}},
     "field 'dims': the input tensor 65536×65536×65536×65536 has 1.84e+19 elements, beyond int64"),
    ({key: value for key, value in GEMM.items() if key != "provenance"}, "field 'provenance': is required"),
    ({**GEMM, "provenance": {"network": "Net", "layer": "fc"}}, "field 'provenance.source': is required"),
    ({**GEMM, "provenance": {**PROV, "source": ""}}, "field 'provenance.source': must be a non-empty string"),
    ({**GEMM, "provenance": {**PROV, "paper": "x"}}, "field 'provenance.paper': unknown key"),
    ({**GEMM, "id": "has space"}, "field 'id': must be a non-empty string without spaces"),
    ({**GEMM, "count": 0}, "field 'count': must be an integer >= 1, got 0"),
    ({**GEMM, "dims": {"n": 8, "k": 16}}, "field 'dims.m': is required"),
    ({**GEMM, "op": "gemn"}, "unknown op 'gemn' (did you mean 'gemm'?)"),
    ({**GEMM, "dims": {"m": 4, "n": 8, "k": 16, "tranpose_a": True}}, "unknown key (did you mean 'transpose_a'?)"),
])
def test_catalog_mistakes_through_the_cli(tmp_path, capsys, entry, expected):
    folder = catalog_dir(tmp_path, entry)
    for command in (["list"], ["run", "--backend", "torch", "--catalog", "all", "-o", str(tmp_path / "r.jsonl")]):
        message = one_error(capsys, main([*command, "--shapes", str(folder)]))
        assert str(folder / "cases.yaml") in message and "entry 1" in message and expected in message


@pytest.mark.parametrize("content, expected", [
    ("cases:\n  - id: x\n    dims: {m: 1\n", "not valid YAML at line"),
    ("cases: [{id: x, op: gemm, dims: {m: 2024-13-45}}]\n", "not valid YAML"),  # PyYAML's ValueError on a date
    ("- just\n- a list\n", "must be a mapping with a 'cases:' list"),
    ("", "must be a mapping with a 'cases:' list"),
    ("cases: {a: 1}\n", "field 'cases': must be a list"),
    ("defaults: {provenance: [1]}\ncases: []\n", "defaults, field 'provenance'"),  # was a TypeError
    ("defaults: {tags: 7}\ncases: []\n", "defaults, field 'tags'"),  # was a TypeError
    ("cases: !!python/object/apply:os.system [touch executed-from-yaml]\n", "not valid YAML"),  # never runs
    ("cases:\n  - !!python/name:os.system\n", "not valid YAML"),
    ("cases: [{<<: *nope}]\n", "not valid YAML"),  # an undefined alias
    ("cases:\n\t- id: x\n", "not valid YAML"),  # a tab
    (yaml.safe_dump({"cases": [GEMM, GEMM]}), "duplicate id"),
    (yaml.safe_dump({"cases": [GEMM], "case": []}), "field 'case': unknown key (did you mean 'cases'?)"),
])
def test_malformed_catalog_files(tmp_path, capsys, monkeypatch, content, expected):
    monkeypatch.chdir(tmp_path)
    folder = catalog_dir(tmp_path, text=content)
    message = one_error(capsys, main(["list", "--shapes", str(folder)]))
    assert str(folder / "cases.yaml") in message and expected in message
    assert not (tmp_path / "executed-from-yaml").exists()


def test_catalog_not_utf8_or_not_a_folder(tmp_path, capsys):
    folder = catalog_dir(tmp_path)
    (folder / "cases.yaml").write_bytes(b"cases: [\xff\xfe]\n")  # was a UnicodeDecodeError traceback
    assert "not UTF-8" in one_error(capsys, main(["list", "--shapes", str(folder)]))
    assert "no such catalog directory" in one_error(capsys, main(["list", "--shapes", str(tmp_path / "nope")]))
    message = one_error(capsys, main(["list", "--shapes", str(folder / "cases.yaml")]))
    assert "cases.yaml: not a folder; a catalog is a folder of *.yaml files" in message


def write_lines(path: Path, *records: dict[str, Any] | str) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


@pytest.mark.parametrize("make, expected", [
    (lambda d: d / "missing.jsonl", "no such results file"),
    (lambda d: (d / "empty").mkdir() or d / "empty", "no *.jsonl results files"),
    (lambda d: write_lines(d / "f.jsonl", {"name": "foreign"}), "not an opbench record"),
    (lambda d: write_lines(d / "f.jsonl", {**HEADER, "schema": 1}, "garbage", measurement()), "line 2: not valid JSON"),
    (lambda d: write_lines(d / "f.jsonl", {**HEADER, "schema": 99}), "written by a newer opbench (schema 99"),
    (lambda d: write_lines(d / "f.jsonl", {**HEADER, "schema": 1}, {**measurement(), "schema": 1, "case": None}),
     "measurement record has no valid 'case' field"),  # `show` indexed it: was a KeyError/TypeError
    (lambda d: write_lines(d / "f.jsonl", {**HEADER, "schema": 1}, {**measurement(), "schema": 1, "stats": 3}),
     "field 'stats' has the wrong type"),
    (lambda d: write_lines(d / "f.jsonl", {**HEADER, "schema": 1}, {**measurement(), "schema": 1, "status": "meh"}),
     "unknown status 'meh'"),
    (lambda d: (d / "f.jsonl").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff") and d / "f.jsonl", "not a text file"),
    (lambda d: write_lines(d / "f.jsonl"), "f.jsonl: no measurements (an empty results file"),
    (lambda d: write_lines(d / "f.jsonl", {**HEADER, "schema": 1}), "f.jsonl: no measurements"),
    (lambda d: write_lines(d / "f.jsonl", "[1, 2]"), "line 1: not an opbench record"),
    (lambda d: write_lines(d / "f.jsonl", {**HEADER, "schema": 1}, "42"), "line 2: not an opbench record"),
    (lambda d: write_lines(d / "f.jsonl", {**HEADER, "schema": "1"}), "line 1: record has no integer 'schema'"),
    (lambda d: write_lines(d / "f.jsonl", measured(), {**HEADER, "schema": 1}), "line 1: no header record before"),
    (lambda d: write_lines(d / "f.jsonl", {**HEADER, "schema": 1}, measured(block_times="0.1,0.2")),
     "line 2: measurement of c1 (torch forward): block_times must be a list of positive finite seconds, got "
     '"0.1,0.2"'),
    (lambda d: write_lines(d / "f.jsonl", {**HEADER, "schema": 1}, measured(block_times=[0.1, "nan", 0.1])),
     "line 2: measurement of c1 (torch forward): block_times must be a list of positive finite seconds"),
    (lambda d: write_lines(d / "f.jsonl", {**HEADER, "schema": 1}, measured(block_times=[0.1, -0.1, 0.1])),
     "block_times must be a list of positive finite seconds"),
    (lambda d: write_lines(d / "f.jsonl", {**HEADER, "schema": 1}, measured(block_times=[0.1, True, 0.1])),
     "block_times must be a list of positive finite seconds"),
    (lambda d: write_lines(d / "f.jsonl", {**HEADER, "schema": 1}, measured(calls_per_block=-4)),
     "line 2: measurement of c1 (torch forward): calls_per_block must be a positive integer, got -4"),
    (lambda d: write_lines(d / "f.jsonl", {**HEADER, "schema": 1}, measured(calls_per_block=2.5)),
     "calls_per_block must be a positive integer, got 2.5"),
    (lambda d: write_lines(d / "f.jsonl", {**HEADER, "schema": 1}, measured(median=0.0005)),
     "stats.median 0.0005 is not the median of block_times / calls_per_block (0.001)"),
    (lambda d: write_lines(d / "f.jsonl", {**HEADER, "schema": 1}, measured(median="nan")),
     'stats.median "nan" is not the median'),
    (lambda d: write_lines(d / "f.jsonl", {**HEADER, "schema": 1}, measured(blocks=7)),
     "stats count 7 blocks of 10 calls, the raw samples 3 of 10"),
    (lambda d: write_lines(d / "f.jsonl", {**HEADER, "schema": 1}, measured(tflops=1.0)),
     "tflops 1.0 is not flops / median"),
    (lambda d: write_lines(d / "f.jsonl", {**HEADER, "schema": 1}, measured(block_times=None, calls_per_block=None)),
     "has statistics but no raw block_times and calls_per_block"),
    # fields the report reads as truth (each was a traceback in `report`)
    (lambda d: write_lines(d / "f.jsonl", {**HEADER, "schema": 1}, {**measured(), "dims": "64x64"}),
     "line 2: measurement field 'dims' has the wrong type: must be an object, got \"64x64\""),
    (lambda d: write_lines(d / "f.jsonl", {**HEADER, "schema": 1}, {**measured(), "dims": {"kind": "gemm", "m": 2}}),
     "line 2: measurement field 'dims' does not describe a gemm or conv2d"),
    (lambda d: write_lines(d / "f.jsonl", {**HEADER, "schema": 1}, {**measured(), "provenance": [1]}),
     "measurement field 'provenance' has the wrong type: must be an object of text"),
    (lambda d: write_lines(d / "f.jsonl", {**HEADER, "schema": 1}, {**measured(), "count": 0}),
     "measurement field 'count' has the wrong type: must be a positive integer, got 0"),
    (lambda d: write_lines(d / "f.jsonl", {**HEADER, "schema": 1}, {**measured(), "tags": "a,b"}),
     "measurement field 'tags' has the wrong type: must be a list of text"),
    (lambda d: write_lines(d / "f.jsonl", {**HEADER, "schema": 1}, {**measured(), "check": {"errors": "small"}}),
     "measurement field 'check' has the wrong type"),
    (lambda d: write_lines(d / "f.jsonl", {**HEADER, "schema": 1}, {**measured(), "stats": {"flags": "noisy"}}),
     "measurement field 'stats' has the wrong type"),
    (lambda d: write_lines(d / "f.jsonl", {**HEADER, "schema": 1, "environment": "x"}, measured()),
     "line 1: header field 'environment' has the wrong type: must be an object"),
    (lambda d: write_lines(d / "f.jsonl", {**HEADER, "schema": 1}, {"record": "worker", "schema": 1, "run_id": "r1",
                                                                    "backend": "torch", "device": "cpu",
                                                                    "versions": "2.13"}, measured()),
     "line 2: worker field 'versions' has the wrong type: must be an object, got \"2.13\""),
])
@pytest.mark.parametrize("command", ["show", "report"])
def test_show_and_report_refuse_damaged_or_foreign_results(tmp_path, capsys, make, expected, command):
    output = ["-o", str(tmp_path / "report")] if command == "report" else []
    assert expected in one_error(capsys, main([command, str(make(tmp_path)), *output]))
    assert not (tmp_path / "report").exists()


def measured(median: Any = 0.001, blocks: int = 3, tflops: float | None = None, **raw: Any) -> dict[str, Any]:
    """A consistent timed measurement (3 blocks of 10 calls, 1 ms per call), with ``raw`` and stats overridden."""
    times = {"block_times": [0.009, 0.010, 0.011], "calls_per_block": 10, **raw}
    flops = 2 * 64**3
    return {**measurement(), "schema": 1, "flops": flops, **times, "tflops": tflops or flops / 0.001 / 1e12,
            "stats": {"median": median, "blocks": blocks, "calls_per_block": 10}}


def test_a_consistent_measurement_is_read(tmp_path, capsys):
    """The corpus above fails for the reason it names: the same record, unchanged, is read and shown."""
    path = write_lines(tmp_path / "f.jsonl", {**HEADER, "schema": 1}, measured())
    assert main(["show", str(path)]) == 0
    assert "1 of 1 measurements" in capsys.readouterr().out


def test_show_warns_about_a_partial_last_line_and_shows_the_rest(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    with ResultsWriter(path) as writer:
        writer.write(HEADER)
        writer.write(measurement("c1"))
    with path.open("a") as handle:
        handle.write(json.dumps(measurement("c2"))[:50])
    assert main(["show", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "partial last line" in err and "1 measurements" in out and "Traceback" not in out + err


def test_a_real_subprocess_gives_one_line_and_exit_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "suite", "run", "--backend", "nope", "-o", str(tmp_path / "r")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("error: unknown backend 'nope'") and "Traceback" not in done.stderr


# ---------------------------------------------------------------------------------------------- properties
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**20), st.floats(allow_nan=True), st.text(max_size=8),
                    st.sampled_from(["gemm", "conv2d", "m", "dims", "", " ", "a b"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                      max_leaves=12)
FIELDS = ["id", "op", "dims", "provenance", "count", "tags", "extra", "dims.m", "dims.k", "dims.h", "dims.r",
          "dims.stride", "dims.padding", "dims.groups", "dims.dilation", "dims.transpose_a", "provenance.layer"]


def mutate(entry: dict[str, Any], field: str, value: Any, delete: bool) -> dict[str, Any]:
    entry = json.loads(json.dumps(entry))
    *parents, last = field.split(".")
    target = entry
    for name in parents:
        if not isinstance(target.get(name), dict):
            return entry
        target = target[name]
    if delete:
        target.pop(last, None)
    else:
        target[last] = value
    return entry


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from([GEMM, CONV]), st.lists(
    st.tuples(st.sampled_from(FIELDS), VALUES, st.booleans()), max_size=3)), max_size=4),
    st.one_of(st.none(), VALUES))
def test_catalog_loader_gives_cases_or_a_catalog_error(tmp_path, entries, defaults):
    cases = []
    for i, (base, changes) in enumerate(entries):
        entry = {**base, "id": f"{base['id']}{i}"}
        for field, value, delete in changes:
            entry = mutate(entry, field, value, delete)
        cases.append(entry)
    path = tmp_path / "prop.yaml"
    path.write_text(yaml.safe_dump({"cases": cases, **({"defaults": defaults} if defaults is not None else {})}))
    try:
        loaded = load_file(path)
    except CatalogError as exc:
        assert exc.file == str(path) and str(path) in str(exc)
        return
    assert len(loaded) == len(cases) and all(isinstance(c.op, Gemm | Conv2d) for c in loaded)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
def test_catalog_loader_on_any_text(tmp_path, text):
    path = tmp_path / "any.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    try:
        load_file(path)
    except CatalogError as exc:
        assert exc.file == str(path)


def read_or_error(path: Path) -> ResultSet | None:
    try:
        return read_results(path)
    except ResultsError as exc:
        assert str(path) in str(exc)
        return None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300))
def test_results_reader_on_any_bytes(tmp_path, data):
    path = tmp_path / "any.jsonl"
    path.write_bytes(data)
    read_or_error(path)


RECORDISH = st.one_of(
    VALUES,
    st.builds(lambda kind, schema, extra: {"record": kind, "schema": schema, **extra},
              st.sampled_from(["header", "worker", "measurement", "other"]), st.sampled_from([0, 1, 2, True, "1"]),
              st.dictionaries(st.sampled_from(["case", "status", "stats", "backend", "options", "tflops"]), VALUES)),
    st.builds(lambda extra: {**measurement(), "schema": 1, **extra},
              st.dictionaries(st.sampled_from(["case", "status", "stats", "threads", "options", "check"]), VALUES)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(RECORDISH, max_size=6), st.integers(0, 10**6))
def test_results_reader_on_any_json_lines_and_truncations(tmp_path, records, cut):
    data = b"".join(json.dumps(r).encode() + b"\n" for r in [{**HEADER, "schema": 1}, *records])
    path = tmp_path / "lines.jsonl"
    path.write_bytes(data[:cut])
    read_or_error(path)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(max_size=10), min_size=1, max_size=5, unique=True), st.data())  # one record per case
def test_a_written_file_cut_at_any_byte_keeps_every_complete_record(tmp_path, cases, data):
    path = tmp_path / "cut.jsonl"
    path.unlink(missing_ok=True)
    with ResultsWriter(path) as writer:
        writer.write(HEADER)
        for case in cases:
            writer.write({**measured(), "case": case, "first_call_s": float("inf"), "reason": "×✓\n\"quoted\""})
    full = path.read_bytes()
    cut = data.draw(st.integers(len(full.split(b"\n")[0]) + 1, len(full)))
    path.write_bytes(full[:cut])
    whole = full[cut - 1:cut] == b"\n" or full[cut - 1:cut + 1] == b"}\n"  # the newline alone may be cut off
    complete = full[:cut].count(b"\n") + (full[cut - 1:cut + 1] == b"}\n")
    results = read_results(path)
    assert [m.case for m in results.measurements] == cases[:complete - 1]
    partial = [w for w in results.warnings if "skipped a partial last line" in w]
    assert bool(partial) == (not whole)  # a partial last line is skipped with a warning
    with ResultsWriter(path) as writer:  # a resumed run appends after exactly those records
        writer.write(measurement("after"))
    assert [m.case for m in read_results(path).measurements] == [*cases[:complete - 1], "after"]


def test_a_last_record_that_lost_only_its_newline_is_kept_by_reader_and_writer(tmp_path):
    """Both must agree: the reader counts it as done, so a resumed run must not drop it (it was lost before)."""
    path = tmp_path / "r.jsonl"
    with ResultsWriter(path) as writer:
        writer.write(HEADER)
        writer.write(measurement("c1"))
    path.write_bytes(path.read_bytes()[:-1])
    assert [m.case for m in read_results(path).measurements] == ["c1"]
    with ResultsWriter(path) as writer:
        assert writer.warning is None
        writer.write(measurement("c2"))
    assert [m.case for m in read_results(path).measurements] == ["c1", "c2"]


# ---------------------------------------------------------------------------------------------- durability, schemas
def test_each_record_is_flushed_and_fsynced_before_write_returns(tmp_path, monkeypatch):
    synced: list[int] = []
    monkeypatch.setattr(results_mod.os, "fsync", lambda fd: synced.append(fd))
    path = tmp_path / "r.jsonl"
    writer = ResultsWriter(path)
    writer.write(HEADER)
    assert synced == [writer._file.fileno()] and len(read_results(path).headers) == 1  # readable before close
    writer.write(measurement())
    assert len(synced) == 2 and len(read_results(path).measurements) == 1
    writer.close()


V1_TO_V2 = results_mod.MIGRATIONS[1]


def rename_case_to_shape_id(record: dict[str, Any]) -> dict[str, Any]:
    """The migration 1 → 2, and a test-only mark: 'case' copied to 'shape_id' (kept as an unmodelled field)."""
    record = V1_TO_V2(record)
    if record["record"] == "measurement":
        record["shape_id"] = record["case"]
    return record


def test_old_schema_is_migrated_and_marked_and_a_resume_into_it_refused(tmp_path, monkeypatch, capsys):
    assert results_mod.SCHEMA_VERSION == 2
    path = write_lines(tmp_path / "old.jsonl", {**HEADER, "schema": 1}, {**measurement("c1"), "schema": 1})
    with ResultsWriter(path) as writer:  # schema 2 appended: now the file mixes two schemas
        writer.write({**HEADER, "run_id": "r2", "catalog": {"networks": []}})
        writer.write(measurement("c2"))
    monkeypatch.setattr(results_mod, "MIGRATIONS", {1: rename_case_to_shape_id})
    results = read_results(path)
    assert [m.case for m in results.measurements] == ["c1", "c2"]
    assert [m.extra.get("shape_id") for m in results.measurements] == ["c1", None]  # only the old one went through it
    assert [h.networks for h in results.headers] == [None, ()]  # schema 1 did not record the catalog's networks
    assert not results.warnings  # an old file reads as it is; only appending to it is refused
    code = main(["run", "--catalog", "smoke", "--backend", "torch", "--resume", "-o", str(path)])
    assert "written with results schema 1; this opbench writes schema 2" in one_error(capsys, code)


def test_a_missing_or_failing_migration_is_a_results_error(tmp_path, monkeypatch):
    path = write_lines(tmp_path / "old.jsonl", {**HEADER, "schema": 1}, {**measurement(), "schema": 1})
    monkeypatch.setattr(results_mod, "SCHEMA_VERSION", 3)
    monkeypatch.setattr(results_mod, "MIGRATIONS", {1: lambda r: r})
    with pytest.raises(ResultsError, match="schema 2 has no migration to 3"):
        read_results(path)
    monkeypatch.setattr(results_mod, "MIGRATIONS", {1: lambda r: r, 2: lambda r: r["missing"]})
    with pytest.raises(ResultsError, match="cannot migrate this schema 2 record: KeyError"):
        read_results(path)


def test_resume_into_a_newer_schema_is_refused(tmp_path, capsys):
    path = write_lines(tmp_path / "new.jsonl", {**HEADER, "schema": results_mod.SCHEMA_VERSION + 1})
    code = main(["run", "--catalog", "smoke", "--backend", "torch", "--resume", "-o", str(path)])
    assert "written by a newer opbench" in one_error(capsys, code)
    assert path.read_text().count("\n") == 1  # untouched


# ---------------------------------------------------------------------------------------------- memory guard
class FakeBackend:
    """Only what the guard looks at; preparing would be a bug (the guard must answer first)."""

    def __init__(self, free: int | None):
        self.free = free
        self.settings = type("S", (), {"device": "gpu" if free is not None else "cpu", "math": "strict"})()

    def free_memory_bytes(self) -> int | None:
        return self.free

    def prepare(self, *args: Any) -> Any:
        raise AssertionError("allocated despite the memory guard")

    def release(self) -> None:
        pass


TASK = {"key": "k", "op": {"kind": "gemm", "m": 2**20, "n": 2**20, "k": 2**20},
        "variant": {"pass_": "forward", "dtype": "fp32", "mode": "", "layout": ""}}


@pytest.mark.parametrize("free, words", [(0, "free on the device (gpu)"), (2**30, "1.0 GiB free on the device"),
                                         (None, "available on the host (MemAvailable) (cpu)")])
def test_memory_guard_skips_before_allocating(free, words):
    result = run_task(FakeBackend(free), TASK, TimingConfig(), check=True, seed=0)
    assert result["status"] == "skipped" and words in result["reason"] and "not allocated" in result["reason"]


def test_memory_guard_uses_memavailable_on_cpu(monkeypatch):
    import suite.worker

    monkeypatch.setattr(suite.worker, "available_memory_bytes", lambda: 5 * 2**30)
    small = {**TASK, "op": {"kind": "gemm", "m": 2**14, "n": 2**14, "k": 2**14}}  # about 6 GiB with headroom
    result = run_task(FakeBackend(None), small, TimingConfig(), check=True, seed=0)
    assert result["status"] == "skipped" and "only 5.0 GiB available on the host" in result["reason"]
    assert result["memory"]["free_bytes"] == 5 * 2**30


def test_catalog_folder_checks_stay_ahead_of_frameworks(tmp_path):
    """Loading a whole folder with a broken file names that file (not the first good one)."""
    folder = catalog_dir(tmp_path, GEMM)
    (folder / "z.yaml").write_text(textwrap.dedent("""
        cases:
          - {id: z, op: gemm, dims: {m: 1, n: 1, k: 0}, provenance: {network: a, layer: b, source: c}}
    """))
    with pytest.raises(CatalogError) as caught:
        load_catalog(folder)
    assert caught.value.file == str(folder / "z.yaml") and caught.value.field == "dims.k"


def test_ctrl_c_outside_a_run_exits_130_without_a_traceback(monkeypatch, capsys):
    import suite.cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(suite.cli, "load_catalog", interrupted)  # e.g. while a large catalog loads
    assert suite.cli.main(["list"]) == 130
    assert "interrupted" in capsys.readouterr().err
