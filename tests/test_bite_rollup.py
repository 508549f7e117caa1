"""Network totals weigh each layer by its count (reports.analysis.network_rollup), against a hand-computed sum."""

from __future__ import annotations

import pandas as pd
import pytest

from reports.analysis import CONFIG, network_rollup
from suite.catalog import FIRST_LAYER_TAG, Case, Provenance, network_sets
from suite.ops import Gemm

SAME = {name: "same" for name in CONFIG}  # one machine, device, dtype, ...: what a total never crosses
# A training set of two layers (a is the network's first layer, so one of its 3 uses computes no dX) and an inference
# set of one layer used 4 times. Times are powers of ten per layer and pass, so every weight shows in the total.
SETS = network_sets([Case("a", Gemm(8, 8, 8), Provenance("net", "a", "s"), 3, ("modern", "train", FIRST_LAYER_TAG)),
                   Case("b", Gemm(8, 8, 16), Provenance("net", "b", "s"), 2, ("modern", "train")),
                   Case("c", Gemm(8, 8, 24), Provenance("net", "c", "s"), 4, ("modern", "inference"))])
TIMES = {("a", "forward"): 1.0, ("a", "backward_data"): 10.0, ("a", "backward_weight"): 100.0,
         ("b", "forward"): 1e3, ("b", "backward_data"): 1e4, ("b", "backward_weight"): 1e5, ("c", "forward"): 5.0}


def pooled(backend: str, times: dict[tuple[str, str], float]) -> pd.DataFrame:
    return pd.DataFrame([{**SAME, "backend": backend, "case": case, "pass": pass_, "kind": "gemm",
                          "mode": "eager", "layout": "row-major", "options": "", "median_s": t, "ci_low_s": t / 2,
                          "ci_high_s": 2 * t} for (case, pass_), t in times.items()])


def test_totals_weigh_each_layer_by_its_count():
    missing_dw = {k: v for k, v in TIMES.items() if k != ("b", "backward_weight")}
    complete, partial = network_rollup(pd.concat([pooled("torch", TIMES), pooled("jax", missing_dw)]), SETS)
    train = complete[complete["phase"].eq("training step")].set_index("backend").loc["torch"]
    # Σ count × (forward + dW) + Σ (count − first) × dX = 3·(1 + 100) + 2·(1e3 + 1e5) + 2·10 + 2·1e4
    assert train["time_s"] == pytest.approx(222_323.0)
    assert (train["forward_s"], train["dx_s"], train["dw_s"]) == pytest.approx((2_003.0, 20_020.0, 200_300.0))
    assert (train["low_s"], train["high_s"]) == pytest.approx((222_323.0 / 2, 222_323.0 * 2))
    assert train["layers"] == 2
    inference = complete[complete["phase"].eq("inference")]
    assert sorted(inference["backend"]) == ["jax", "torch"] and (inference["time_s"] == 4 * 5.0).all()
    # a framework without every layer of a set gets no total, only the list of what is missing
    assert list(partial["backend"]) == ["jax"] and list(partial["missing"]) == [["b"]]
    assert "jax" not in set(complete.loc[complete["phase"].eq("training step"), "backend"])
