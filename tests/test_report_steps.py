"""The report's "Where does a training step's time go?" on handmade results: a whole model (tag whole:toy) measured
in its three passes by three frameworks beside every layer of the catalog set toy. Every number of the section is
computed by hand here: the step, the layer sum, the remainder and its bounds, layer sum / step, the forward,
backward + update and update shares, the ranking and the pair that swaps; then the partial data (an incomplete layer
set, a failed, flagged or check-failed step, no step at all) and the figure.

The layer set is tests/test_report_model.py's toy network (a training step of 42 s in torch, scale × 42 s
elsewhere). Framework-free."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.figure import Figure

from reports import analysis, figures, summary
from reports.site import build_site
from suite.models import Model
from tests.test_report_model import NET, network, record, results

ORDER = ("torch", "tensorflow", "jax")
VARIED = (0.9, 1.0, 1.0, 1.0, 1.0, 1.0, 1.1)  # blocks whose CI is [0.9, 1.1] × their median


def whole(backend: str, step: float, inference: float, forward_backward: float, *, mode: str = "eager",
          step_blocks: tuple[float, ...] = (1.0,) * 7, **step_extra: object) -> list[dict]:
    """A whole-model case (tag whole:toy) in its three passes; the step's blocks and extra fields as given."""
    op = Model(network="resnet50", batch=8, size=224)
    tags = ("model", "whole:toy")
    return [record("model-toy", backend, "forward", inference, op, mode=mode, tags=tags),
            record("model-toy", backend, "backward", forward_backward, op, mode=mode, tags=tags),
            {**record("model-toy", backend, "step", step, op, mode=mode, tags=tags, blocks=step_blocks),
             **step_extra}]


def varied_layers(backend: str) -> list[dict]:
    """The toy set's layers, each pass's blocks spread as VARIED: the layer sum's interval is [0.9, 1.1] × its sum."""
    return [{**r, **record(r["case"], backend, r["pass"], r["stats"]["median"], count=r["count"],
                           tags=tuple(r["tags"]), blocks=VARIED)} for r in network(backend)]


def three() -> list[dict]:
    """Layer sums: torch 42 s (CI bounds 37.8–46.2 s), tensorflow 126 s, jax 84 s (ranking torch, jax, tensorflow).
    Steps: torch 60 s (CI 54–66), tensorflow 150 s, jax 50 s: jax's layers alone take longer than its step, and jax
    overtakes torch at the step."""
    return [*varied_layers("torch"), *network("tensorflow", 3.0), *network("jax", 2.0),
            *whole("torch", 60.0, 15.0, 54.0, step_blocks=VARIED),
            *whole("tensorflow", 150.0, 30.0, 135.0, mode="function"), *whole("jax", 50.0, 20.0, 45.0, mode="jit")]


def analyzed(*records: dict) -> analysis.Analysis:
    return analysis.analyze(results(*records, cases=NET), order=ORDER)


def row(a: analysis.Analysis, backend: str) -> pd.Series:
    [found] = [r for _, r in a.steps.iterrows() if r["backend"] == backend and r["best"]]
    return found


def test_step_layer_sum_remainder_and_ratio_per_framework() -> None:
    a = analyzed(*three())
    torch, tf, jax = row(a, "torch"), row(a, "tensorflow"), row(a, "jax")
    assert (torch["step_s"], torch["step_low_s"], torch["step_high_s"]) == pytest.approx((60, 54, 66))
    assert (torch["layer_s"], tf["layer_s"], jax["layer_s"]) == pytest.approx((42, 126, 84))
    assert (torch["layer_low_s"], torch["layer_high_s"]) == pytest.approx((37.8, 46.2))
    assert torch["layer_variant"] == "eager · row-major" and torch["layers_status"] == "complete"
    # remainder = step − layer sum; bounds: step low − layer sum high, step high − layer sum low
    assert (torch["remainder_s"], torch["remainder_low_s"], torch["remainder_high_s"]) == \
        pytest.approx((18, 54 - 46.2, 66 - 37.8))
    assert (tf["remainder_s"], jax["remainder_s"]) == pytest.approx((24, -34))
    assert (torch["layer_ratio"], torch["layer_ratio_low"], torch["layer_ratio_high"]) == \
        pytest.approx((0.7, 37.8 / 66, 46.2 / 54))
    assert (tf["layer_ratio"], jax["layer_ratio"]) == pytest.approx((126 / 150, 84 / 50))


def test_forward_backward_and_update_shares_of_the_real_step() -> None:
    a = analyzed(*three())
    torch, tf, jax = row(a, "torch"), row(a, "tensorflow"), row(a, "jax")
    # forward = inference / step; backward + update = 1 − that; update = 1 − forward+backward / step
    assert (torch["forward_share"], torch["backward_update_share"], torch["update_share"]) == \
        pytest.approx((0.25, 0.75, 0.1))
    assert (tf["forward_share"], tf["update_share"]) == pytest.approx((0.2, 0.1))
    assert (jax["forward_share"], jax["backward_update_share"], jax["update_share"]) == pytest.approx((0.4, 0.6, 0.1))
    # bootstrap CIs of the ratios of medians: inside what the step's extremes allow, around the point
    assert 15 / 66 <= torch["forward_share_low"] <= 0.25 <= torch["forward_share_high"] <= 15 / 54
    assert torch["backward_update_share_low"] == pytest.approx(1 - torch["forward_share_high"])


def test_the_ranking_of_the_layer_sums_and_the_pair_that_swaps_at_the_step() -> None:
    ranks = analyzed(*three()).step_ranking.set_index(["first", "second"])
    assert set(ranks.index) == {("torch", "jax"), ("torch", "tensorflow"), ("jax", "tensorflow")}
    swap = ranks.loc[("torch", "jax")]
    assert (swap["layer_ratio"], swap["step_ratio"]) == pytest.approx((2.0, 50 / 60))
    assert swap["verdict"] == "faster" and swap["swapped"]
    assert not ranks.loc[("jax", "tensorflow"), "swapped"] and ranks.loc[("jax", "tensorflow"), "verdict"] == "slower"


def test_the_headline_states_the_numbers_of_the_table() -> None:
    [block] = summary.steps(analyzed(*three()))
    assert block["where"] == "Net"
    assert block["headline"] == (
        "On this CPU, in a Net training step (toy), the measured layers (GEMMs) take 70% of torch's step (60 s), "
        "84% of tensorflow's step (150 s) and 168% of jax's step (50 s); the rest (normalization, activations, "
        "elementwise ops, the loss, the SGD update and framework overhead, less what fusion saves) takes 30% of "
        "torch's and 16% of tensorflow's; timed alone, the layers take longer than jax's whole step. The forward "
        "pass (inference, eval mode) takes 25% of torch's, 20% of tensorflow's and 40% of jax's, backward and "
        "update the rest; the layer sums' ranking (torch, jax, tensorflow) does not hold for the whole step: jax "
        "is 1.2× faster than torch at the step though 2.0× slower at the layer level.")
    table = block["tables"][0]
    cells = {r[0]["text"]: [c["text"] for c in r[2:]] for r in table["rows"]}
    assert cells["torch"] == ["60 s", "42 s", "18 s", "70%", "25%", "75%", "10%"]
    assert cells["jax"] == ["50 s", "84 s", "−34 s", "168%", "40%", "60%", "10%"]
    torch = next(r for r in table["rows"] if r[0]["text"] == "torch")
    assert torch[4]["ci"] == "7.8 s to 28.2 s" and torch[5]["ci"] == "57%–86%" and torch[2]["ci"] == "54 s–66 s"
    assert torch[3]["ci"] == "37.8 s–46.2 s; eager · row-major"
    assert [r[0]["text"] for r in table["rows"]] == list(ORDER)  # the report's framework order


def test_when_the_step_holds_the_ranking_the_headline_says_so() -> None:
    records = [*network("torch"), *network("jax", 2.0), *whole("torch", 60.0, 15.0, 54.0),
               *whole("jax", 90.0, 20.0, 80.0, mode="jit")]
    [block] = summary.steps(analyzed(*records))
    assert block["headline"].endswith("the layer sums' ranking (torch, jax) holds for the whole step.")


def test_an_incomplete_layer_set_gets_no_remainder_and_no_claim() -> None:
    records = [*network("torch"), *network("tensorflow", 3.0, layers=("L1",)), *whole("torch", 60.0, 15.0, 54.0),
               *whole("tensorflow", 150.0, 30.0, 135.0, mode="function")]
    a = analyzed(*records)
    tf = row(a, "tensorflow")
    assert (tf["layers_status"], tf["layers_measured"], tf["layers_total"]) == ("incomplete", 1, 2)
    assert math.isnan(tf["layer_s"]) and math.isnan(tf["remainder_s"]) and math.isnan(tf["layer_ratio"])
    assert tf["forward_share"] == pytest.approx(0.2)  # the step's own shares need no layers
    assert a.step_ranking.empty  # a ranking needs two complete layer sums
    [block] = summary.steps(a)
    assert "take 70% of torch's step (60 s); the rest" in block["headline"]
    assert "tensorflow's layer set is incomplete (1 of 2 layers), so no layer share is claimed for it." \
        in block["headline"]
    assert "of tensorflow's step" not in block["headline"].split(".")[0]
    cells = {r[0]["text"]: [c["text"] for c in r[3:6]] for r in block["tables"][0]["rows"]}
    assert cells["tensorflow"] == ["incomplete: 1 of 2 layers", "–", "–"]


def test_no_step_no_row_and_a_failed_step_is_named() -> None:
    failed = {"status": "error", "reason": "RuntimeError: boom", "stats": None, "block_times": None}
    records = [*network("torch"), *network("jax", 2.0), *whole("torch", 60.0, 15.0, 54.0),
               *whole("jax", 90.0, 20.0, 80.0, mode="jit", **failed)]
    a = analyzed(*records)
    assert list(a.steps["backend"]) == ["torch"]
    [block] = summary.steps(a)
    assert "jax" not in block["headline"]
    assert "No training step from jax: error (jit · row-major; reason under Warnings), so it has no row." \
        in block["notes"]
    only_layers = analyzed(*network("torch"), *whole("torch", 60.0, 15.0, 54.0)[:2])  # inference, fwd+bwd: no step
    assert only_layers.steps.empty
    [missing] = summary.steps(only_layers)
    assert missing["missing"] and "hold no whole-model training step" in missing["headline"]


def test_a_flagged_or_check_failed_step_is_flagged_where_its_number_stands() -> None:
    check = {"status": "fail", "errors": {"loss": 1.0}, "tolerance": 1e-5}
    records = [*network("torch"), *network("jax", 2.0),
               *whole("torch", 60.0, 15.0, 54.0, step_blocks=VARIED),
               *whole("jax", 90.0, 20.0, 80.0, mode="jit", check=check)]
    records[-4]["stats"]["flags"] = ["unstable"]  # torch's step
    [block] = summary.steps(analyzed(*records))
    assert "70% of torch's step (60 s; flagged: unstable)" in block["headline"]
    assert "of jax's step (90 s; flagged: check failed (training step))" in block["headline"]
    steps = {r[0]["text"]: r[2]["ci"] for r in block["tables"][0]["rows"]}
    assert steps["torch"].endswith("; flagged: unstable")
    assert steps["jax"].endswith("; flagged: check failed (training step)")
    assert summary.pct_ci(math.nan, 0.5) == "no CI" and summary.pct_ci(0.25, 0.5) == "25%–50%"


def test_the_figure_renders_complete_incomplete_and_over_rows(tmp_path: Path) -> None:
    records = [r for r in three() if not (r["backend"] == "tensorflow" and r["case"] == "L2")]
    a = analyzed(*records)
    assert set(a.steps["layers_status"]) == {"complete", "incomplete"}
    fig = figures.whole_steps(a.steps, a.palette)
    assert isinstance(fig, Figure)
    left = fig.axes[0]
    assert [t.get_text() for t in left.get_yticklabels()] == ["Net · torch", "Net · tensorflow", "Net · jax"]
    assert "layers 168%" in [t.get_text().strip() for t in left.texts]
    fig.savefig(tmp_path / "steps.png", dpi=60)
    assert (tmp_path / "steps.png").stat().st_size > 1000
    assert figures.whole_steps(analyzed(*network("torch")).steps) is None
    # a step faster than its forward+backward pass (negative update share) draws no update and no more than 100%
    quick = analyzed(*network("torch"), *whole("torch", 60.0, 15.0, 66.0))
    assert row(quick, "torch")["update_share"] == pytest.approx(-0.1)
    shares = figures.whole_steps(quick.steps).axes[1]
    assert max(p.get_x() + p.get_width() for p in shares.patches) == pytest.approx(100)


def test_the_site_shows_the_section_its_figure_and_its_data(tmp_path: Path) -> None:
    records = three()
    next(r for r in records if (r["backend"], r["pass"]) == ("torch", "step"))["stats"]["flags"] = ["noisy",
                                                                                                   "short_blocks"]
    index = build_site(results(*records, cases=NET), tmp_path / "site", order=ORDER)
    html = index.read_text(encoding="utf-8")
    assert 'id="q-steps"' in html and 'src="figures/steps.png"' in html
    assert "the measured layers (GEMMs) take 70% of torch&#39;s step (60 s; flagged: noisy)" in html
    data = pd.read_csv(tmp_path / "site" / "data" / "steps.csv")
    assert "samples" not in data and set(data["backend"]) == set(ORDER)
    assert data.set_index("backend").loc["torch", "step_flags"] == "noisy;short_blocks"


def test_layers_about_as_long_as_the_step_are_said_so_not_a_negative_rest() -> None:
    """Layer sum 42 s (CI 37.8-46.2) against a 40 s step (CI 36-44): the remainder, -2 s, has bounds -10.2 to 6.2 s,
    so the layers take about as long as the step; no "rest" of -5% is printed."""
    [found] = summary.steps(analyzed(*varied_layers("torch"), *whole("torch", 40.0, 15.0, 36.0, step_blocks=VARIED)))
    head = found["headline"]
    assert "torch's layers alone take about as long as its whole step (the remainder's bounds include 0)" in head
    assert "the rest (" not in head and "-5%" not in head and "take longer than" not in head


def test_beside_another_configuration_the_section_names_its_own(tmp_path: Path) -> None:
    """An int8 GEMM beside the fp32 models (as in the main job) makes two configurations: each block of the section
    is titled with its configuration (not its case), and the site builds."""
    records = [*three(), {**record("int8-gemm", "torch", "forward", 1.0), "dtype": "int8"}]
    [found] = summary.steps(analyzed(*records))
    assert found["where"].endswith("· cpu · fp32 · strict · 2 threads") and "model-toy" not in found["where"]
    assert "torch's step" in found["headline"]
    assert 'id="q-steps"' in build_site(results(*records, cases=NET), tmp_path / "site",
                                        order=ORDER).read_text(encoding="utf-8")


def test_each_step_variant_gets_a_row_against_the_rollups_fastest_complete_variant() -> None:
    compiled = [{**r, "mode": "compile"} for r in network("torch", 1.5)]  # the layers in a slower variant: 63 s
    records = [*network("torch"), *compiled, *whole("torch", 60.0, 15.0, 54.0),
               *whole("torch", 55.0, 15.0, 50.0, mode="compile")]
    a = analyzed(*records)
    rows = a.steps.set_index("variant")
    assert set(rows.index) == {"eager · row-major", "compile · row-major"}
    assert set(rows["layer_variant"]) == {"eager · row-major"} and set(rows["layer_s"]) == {42.0}
    assert rows.loc["compile · row-major", "best"] and not rows.loc["eager · row-major", "best"]
    assert rows.loc["eager · row-major", "remainder_s"] == pytest.approx(18)
    [block] = summary.steps(a)
    assert "take 76% of torch's step (55 s)" in block["headline"]  # 42 / 55: the fastest step variant
    table = [(r[1]["text"], r[2]["text"], r[2]["bold"]) for r in block["tables"][0]["rows"]]
    assert table == [("compile · row-major", "55 s", True), ("eager · row-major", "60 s", False)]


def test_a_pair_the_step_cannot_tell_apart_is_a_tie_not_a_swap() -> None:
    records = [*network("torch"), *network("jax", 2.0), *whole("torch", 60.0, 15.0, 54.0),
               *whole("jax", 61.0, 20.0, 55.0, mode="jit")]  # 61 / 60: inside the same-speed band
    a = analyzed(*records)
    [pair] = a.step_ranking.itertuples()
    assert (pair.first, pair.second, pair.verdict, pair.swapped) == ("torch", "jax", "same", False)
    [block] = summary.steps(a)
    assert block["headline"].endswith(
        "the layer sums' ranking (torch, jax) is not confirmed by the whole step: torch and jax are not told apart at "
        "the step (time jax/torch 1.02, 95% CI 1.02–1.02 reaching into 1 ± 3%).")


def test_a_layer_set_incomplete_everywhere_leaves_the_step_alone() -> None:
    [block] = summary.steps(analyzed(*network("torch", layers=("L1",)), *whole("torch", 60.0, 15.0, 54.0)))
    assert block["headline"] == (
        "On this CPU, in a Net training step (toy), the step takes 60 s with torch; the layer set toy is incomplete "
        "in every framework, so no layer share is claimed. The forward pass (inference, eval mode) takes 25% of "
        "torch's, backward and update the rest.")


def test_a_whole_model_gets_the_step_section_not_a_per_kind_section() -> None:
    """The per-kind section says "backward against forward"; a model's backward pass is forward+backward, so the
    training step section answers it and no per-kind section is made."""
    a = analyzed(*three())
    assert "model" not in a.kinds
    assert not [q for q in summary.answers(a) if q["id"] == "kind-model"]
