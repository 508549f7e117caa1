"""What a report states, read back from the built site: the lede and every headline sentence of index.html, and the
key columns of data/*.csv, rounded. Shared by tests/test_golden_report.py and by the one-off script that wrote the
expected values with the code before the results model (commit 0ec2ccf):

    git archive 0ec2ccf | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old python tests/golden_report.py /tmp/old tests/data/golden/expected_report.json

Framework-free; imports only pandas (and, in the script, the report code on PYTHONPATH).
"""

from __future__ import annotations

import html
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import pandas as pd

GOLDEN = Path(__file__).parent / "data" / "golden"
FILES = [*sorted(GOLDEN.glob("*_3fw.jsonl")), GOLDEN / "handmade_failures.jsonl"]
ORDER = ("torch", "tensorflow", "jax")  # the backend registry's order, as the CLI passes it
DIGITS = 9  # significant digits kept: the same arithmetic in another order differs in the last bits only

# data/<table>.csv → (the columns naming a row, the columns stated). Text columns (bases, captions) are left out.
CONFIG = ["machine", "device", "dtype", "math", "threads", "l2"]
TABLES: dict[str, tuple[list[str], list[str]]] = {
    "measurements": (["run_id", "case", "backend", "pass", "variant", "dtype"],
                     ["status", "median_s", "tflops", "gbps", "pct_peak_measured", "pct_peak_theoretical"]),
    "pooled": (["case", "backend", "pass", "variant", "dtype"],
               ["median_s", "ci_low_s", "ci_high_s", "tflops", "tflops_low", "tflops_high", "gbps",
                "pct_peak_measured", "pct_peak_theoretical", "speedup", "speedup_low", "speedup_high",
                "speedup_verdict", "best", "runs"]),
    "speedups": ([*CONFIG, "pass", "kind", "backend"], ["geomean", "low", "high", "cases", "wins"]),
    "variants": ([*CONFIG, "backend", "variant"], ["default", "tried", "won"]),
    "variant_effects": ([*CONFIG, "backend", "variant", "pass"], ["geomean", "low", "high", "cases"]),
    "pass_ratios": ([*CONFIG, "case", "backend", "variant", "which"],
                    ["ratio", "ratio_low", "ratio_high", "flop_ratio"]),
    "pass_ratio_summary": ([*CONFIG, "which", "backend"], ["geomean", "low", "high", "flop_ratio", "cases"]),
    "networks": ([*CONFIG, "set", "backend", "variant"],
                 ["layers", "time_s", "low_s", "high_s", "forward_s", "dx_s", "dw_s", "forward_share", "dx_share",
                  "dw_share"]),
    "partial_networks": ([*CONFIG, "set", "backend", "variant"], ["layers", "measured", "missing"]),
    "scaling_points": ([*CONFIG, "sweep", "backend", "phase", "size"], ["time_s", "low_s", "high_s", "fitted"]),
    "scaling_fits": ([*CONFIG, "sweep", "backend", "phase"],
                     ["slope", "slope_stderr", "fitted", "points", "excluded_sizes"]),
    "conv_vs_dense": ([*CONFIG, "framing", "conv", "dense", "backend"],
                      ["ratio", "low", "high", "verdict", "flop_ratio"]),
    "peaks": (["machine", "device", "dtype", "math"],
              ["theoretical_tflops", "measured_tflops", "measured_case", "measured_backend",
               "measured_pct_of_theoretical", "above_theoretical", "max_pct_theoretical", "above_measured",
               "max_pct_measured", "bandwidth_gbps"]),
}


# The layer sets the BERT run would have recorded (results schema 2): network_sets of the catalog at commit ead18ed,
# which measured bert_3fw.jsonl (four GEMMs per BERT-base layer set; the attention core was added to the catalog
# later, so the bundled catalog now judges these networks partial).
BERT_SETS = [{"set": name, "network": "BERT-base", "phase": phase, "layers": [
    {"case": f"{prefix}-{layer}", "count": 12, "first_layer": False, "weightless": False}
    for layer in ("qkv", "attn-out", "ffn-up", "ffn-down")]}
    for name, phase, prefix in (("bert-base-train-b8s128", "training step", "bert-base-train-b8s128"),
                                ("bert-base-infer-b1s128", "inference", "bert-base-infer"))]


def with_catalog(source: Path, target: Path) -> Path:
    """``source`` as a schema-2 file whose header records the network sets its run used (none but BERT's)."""
    lines = []
    for line in source.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        record["schema"] = 2
        if record["record"] == "header":
            record["catalog"] = {"networks": BERT_SETS if source.name == "bert_3fw.jsonl" else []}
        lines.append(json.dumps(record))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return target


def as_run(folder: Path) -> list[Path]:
    """The golden files as schema-2 files in ``folder``, each recording the catalog its run used."""
    return [with_catalog(path, folder / path.name) for path in FILES]


def _value(value: Any) -> Any:
    """A cell as JSON: floats rounded to DIGITS significant digits, NaN as None."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        value = float(value)
        if not math.isfinite(value):
            return None
        return float(f"{value:.{DIGITS}g}")
    return str(value)


def stated(site: Path) -> dict[str, Any]:
    """The report's stated numbers: {"lede", "headlines": [[question, where, text]], "data": {table: {row: {col}}}}."""
    page = (site / "index.html").read_text(encoding="utf-8")
    lede = re.search(r'<p class="lede">(.*?)</p>', page, flags=re.S)
    summary = page.split('<section id="summary">', 1)[1].split("</section>", 1)[0]
    summary = re.sub(r"<figure.*?</figure>", "", summary, flags=re.S)  # a figure's "Not drawn" is no headline
    headlines = []
    for question in re.split(r'<div class="question" id="q-', summary)[1:]:
        qid = question.split('"', 1)[0]
        where = ""
        for tag, text in re.findall(r'<(h4|p class="(?:headline|missing)")>(.*?)</(?:h4|p)>', question, flags=re.S):
            if tag == "h4":
                where = html.unescape(text)
            else:
                headlines.append([qid, where, " ".join(html.unescape(text).split())])
    data: dict[str, dict[str, dict[str, Any]]] = {}
    for name, (key, columns) in TABLES.items():
        path = site / "data" / f"{name}.csv"
        frame = pd.read_csv(path, keep_default_na=False, na_values=[""]) if path.stat().st_size > 1 else None
        rows: dict[str, dict[str, Any]] = {}
        if frame is not None and len(frame):
            for _, r in frame.iterrows():
                rows[" | ".join(str(r[k]) for k in key)] = {c: _value(r[c]) for c in columns if c in frame}
        data[name] = rows
    return {"lede": " ".join(html.unescape(lede.group(1) if lede else "").split()), "headlines": headlines,
            "data": data}


AS_RUN_TABLES = ("networks", "partial_networks")  # what judging networks by another catalog changes


def dumps(expected: dict[str, Any]) -> str:
    """JSON with one line per table row (a reviewable diff)."""
    def rows(table: dict[str, Any]) -> str:
        return "{\n" + ",\n".join(f"   {json.dumps(k, ensure_ascii=False)}: "
                                   f"{json.dumps(v, ensure_ascii=False, sort_keys=True)}"
                                   for k, v in sorted(table.items())) + "}"

    parts = []
    for config, facts in expected.items():
        data = ",\n  ".join(f"{json.dumps(name)}: {rows(table)}" for name, table in facts["data"].items())
        parts.append(f"{json.dumps(config)}: {{\n \"lede\": {json.dumps(facts['lede'], ensure_ascii=False)},\n"
                     f" \"headlines\": [\n  " + ",\n  ".join(json.dumps(h, ensure_ascii=False)
                                                           for h in facts["headlines"]) +
                     f"],\n \"data\": {{\n  {data}}}}}")
    return "{" + ",\n".join(parts) + "}\n"


def _write_expected(old: Path, out: Path) -> None:
    """Build the golden report with the code on PYTHONPATH (the old one) in the two ways the test compares."""
    import tempfile

    from reports.site import build_site  # the code at ``old``, put first on PYTHONPATH by the caller

    assert Path(sys.modules["reports.site"].__file__).resolve().is_relative_to(old.resolve()), "old code not first"
    expected = {}
    with tempfile.TemporaryDirectory() as tmp:
        # as `python -m suite report` builds it: networks judged against the bundled catalog
        build_site(FILES, Path(tmp) / "bundled", baseline="torch", order=ORDER)
        expected["bundled"] = stated(Path(tmp) / "bundled")
        # networks judged against the layer sets the runs were measured with (their net: tags): the old code's
        # cases=() took them from the results; the new code reads them from the catalog a run records
        build_site(FILES, Path(tmp) / "as_run", baseline="torch", cases=(), order=ORDER)
        as_run = stated(Path(tmp) / "as_run")
        expected["as_run"] = {**as_run, "data": {name: as_run["data"][name] for name in AS_RUN_TABLES}}
    assert json.loads(dumps(expected)) == expected
    out.write_text(dumps(expected), encoding="utf-8")


if __name__ == "__main__":
    _write_expected(Path(sys.argv[1]), Path(sys.argv[2]))
