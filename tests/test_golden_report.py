"""Unchanged numbers: the report built from tests/data/golden/*.jsonl (real runs of three frameworks, results schema 1)
states what the report built by the code before the results model (commit 0ec2ccf) stated: the lede, every headline
sentence, and the key columns of data/*.csv (tests/golden_report.py reads them back; the expected values in
tests/data/golden/expected_report.json were written once by running that code, as its docstring says).

Two builds: as ``python -m suite report`` makes it (the files record no catalog, so their networks are judged against
the bundled catalog, which now lists BERT's attention core: the networks are partial), and with the files carrying
the catalog their runs used (schema 2), which the old code approximated by taking the sets from the results
(``cases=()``): the networks are complete and get their totals.

The one addition since: the section "Where does a training step's time go?" (issue 20), whose headline these
results, holding no whole-model step, answer with its "cannot say" sentence; that line was added to the expected
values by hand.

No number differs. Deliberate changes of the refactor that a golden file could show and does not: the same-speed band
was ±3% in the report before and is ``suite.results.SAME_BAND`` (3%) now; % of peak is ``percent_of`` (the peak GEMM
reads exactly 100%, where (100 · x) / x could round above it: here the old code happened to give 100.0 too).
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from reports.site import build_site
from tests.golden_report import FILES, GOLDEN, ORDER, as_run, stated

EXPECTED = json.loads((GOLDEN / "expected_report.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("golden")
    build_site(FILES, tmp / "bundled", baseline="torch", order=ORDER)
    build_site(as_run(tmp / "as_run_results"), tmp / "as_run", baseline="torch", order=ORDER)
    return {"bundled": stated(tmp / "bundled"), "as_run": stated(tmp / "as_run")}


def differences(got: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """Where ``got`` states another number or word than ``expected`` (numbers equal to 1e-7, relative)."""
    out = []
    if got["lede"] != expected["lede"]:
        out.append(f"lede: {got['lede']!r} != {expected['lede']!r}")
    if got["headlines"] != expected["headlines"]:
        out.append(f"headlines: {got['headlines']} != {expected['headlines']}")
    for table, rows in expected["data"].items():
        have = got["data"][table]
        if set(have) != set(rows):
            out.append(f"{table}: rows {sorted(set(have) ^ set(rows))[:5]} in one report only")
        for row in set(have) & set(rows):
            for column, value in rows[row].items():
                new = have[row].get(column, "missing")
                same = (new == value or (isinstance(value, float) and isinstance(new, float)
                                         and math.isclose(new, value, rel_tol=1e-7)))
                if not same:
                    out.append(f"{table} [{row}] {column}: {new!r} != {value!r}")
    return out


@pytest.mark.parametrize("config", ["bundled", "as_run"])
def test_the_report_states_the_numbers_the_old_report_stated(built: dict[str, dict[str, Any]], config: str) -> None:
    found = differences(built[config], EXPECTED[config])
    assert not found, "\n".join(found[:20])


def test_the_golden_comparison_bites(built: dict[str, dict[str, Any]]) -> None:
    """A changed share, a changed verdict and a changed headline are each found."""
    expected = EXPECTED["as_run"]
    row = next(r for r, v in expected["data"]["networks"].items() if v["dw_share"] is not None)  # a training step
    changed = json.loads(json.dumps(built["as_run"]))
    changed["data"]["networks"][row]["dw_share"] *= 1.001
    changed["headlines"][0][2] = changed["headlines"][0][2].replace("torch is fastest", "jax is fastest")
    found = differences(changed, expected)
    assert any("dw_share" in f for f in found) and any(f.startswith("headlines") for f in found)
    assert EXPECTED["as_run"]["data"]["networks"] and EXPECTED["bundled"]["data"]["partial_networks"]
