"""The link bandwidth an all-reduce's bus bandwidth compares with: NVML's NVLink and PCIe links of each GPU (a fake
NVML), the user's ``run --link-bandwidth`` (which wins), the header's record, and the report's line and sentence."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

import suite.runner
from reports import analysis, figures, peak, summary
from suite import environment, gpu_state
from suite.cli import _parse, main
from suite.gpu_state import NO_LINK, LinkBandwidth, link_bandwidth, nvml_link_bandwidth
from suite.ops import AllReduce, op_to_dict
from suite.results import Environment, Measurement, ResultSet, RunHeader
from tests.test_gpu import fake_nvml

H100_BASIS = "18 NVLink 4 links × 25 GB/s per direction"


# ---------------------------------------------------------------------------------------------- NVML
def test_an_h100s_active_nvlink_links_and_its_pcie_link_are_recorded():
    gpu = gpu_state.describe(fake_nvml(devices=2))["gpus"][0]["interconnect"]
    assert gpu["nvlink_links"] == 18 and gpu["nvlink_version"] == "4"  # NVML's enum 6 is NVLink 4.0, not "6"
    assert gpu["nvlink_gbps_per_link"] == 25.0 and gpu["nvlink_gbps"] == 450.0 and gpu["nvlink"] is None
    assert (gpu["pcie_max_generation"], gpu["pcie_max_width"]) == (5, 16)
    assert (gpu["pcie_current_generation"], gpu["pcie_current_width"]) == (1, 16)  # idle: trained down
    assert gpu["pcie_gbps_per_lane"] == 3.938 and gpu["pcie_gbps"] == pytest.approx(63.008)
    assert gpu["gbps"] == 450.0 and gpu["basis"] == H100_BASIS


def test_the_machines_nvml_link_is_the_nvlink_of_every_gpu():
    found = nvml_link_bandwidth(gpu_state.describe(fake_nvml(devices=2)))
    assert found == LinkBandwidth(450.0, "NVML", f"NVML: {H100_BASIS}, each of 2 GPUs", "NVLink")


def test_a_gpu_whose_nvlink_query_raises_not_supported_falls_back_to_its_pcie_link_and_is_the_slowest():
    block = gpu_state.describe(fake_nvml(devices=2, no_nvlink=(1,)))
    first, second = (g["interconnect"] for g in block["gpus"])
    assert first["nvlink_links"] == 18 and first["gbps"] == 450.0
    assert second["nvlink_links"] is None and second["nvlink_gbps"] is None
    assert second["nvlink"] == "not supported (Not Supported)"
    assert second["gbps"] == pytest.approx(16 * 3.938)
    assert second["basis"] == ("PCIe gen 5 x16 (maximum link) × 3.938 GB/s per lane per direction "
                               "(NVLink: not supported (Not Supported))")
    found = nvml_link_bandwidth(block)
    assert found.gbps == pytest.approx(63.008) and found.kind == "PCIe" and found.source == "NVML"
    assert found.basis.endswith(", GPU 1's, the slowest of 2")


@pytest.mark.parametrize("enum, links, version, gbps", [
    (2, 6, "2", 150.0),  # V100: 6 links, 300 GB/s both directions
    (4, 12, "3", 300.0),  # A100: 12 links, 600 GB/s both directions
    (5, 12, "3.1", 300.0),
    (6, 18, "4", 450.0),  # H100: 18 links, 900 GB/s both directions
    (7, 18, "5", 900.0),  # Blackwell: 18 links of 100 GB/s, 1.8 TB/s both directions
])
def test_nvmls_version_enum_is_decoded_before_the_per_link_table(enum, links, version, gbps):
    gpu = gpu_state.describe(fake_nvml(devices=1, nvlinks=(links,), nvlink_version=enum))["gpus"][0]["interconnect"]
    assert gpu["nvlink_version"] == version and gpu["nvlink_links"] == links and gpu["gbps"] == gbps


def test_an_nvlink_version_not_in_the_table_or_no_active_link_leaves_pcie():
    unknown = gpu_state.describe(fake_nvml(devices=1, nvlink_version=8))["gpus"][0]["interconnect"]  # NVLink 6.0
    assert unknown["nvlink_gbps"] is None and "NVLink 6 is not in opbench's per-link table" in unknown["nvlink"]
    assert unknown["gbps"] == pytest.approx(63.008)
    idle = gpu_state.describe(fake_nvml(devices=1, nvlinks=(0,)))["gpus"][0]["interconnect"]
    assert idle["nvlink_links"] == 0 and idle["nvlink"] == "no active link" and idle["basis"].startswith("PCIe gen 5")


def test_without_the_maximum_pcie_link_the_current_one_is_used_and_named():
    nvml = fake_nvml(devices=1, no_nvlink=(0,), unsupported=("pcie_max_generation", "pcie_max_width"),
                     pcie_now=(4, 8))
    gpu = gpu_state.describe(nvml)["gpus"][0]["interconnect"]
    assert gpu["gbps"] == pytest.approx(8 * 1.969) and "PCIe gen 4 x8 (current link)" in gpu["basis"]


def test_a_gpu_without_any_link_nvml_gives_is_no_link_bandwidth_and_says_why():
    nvml = fake_nvml(devices=1, no_nvlink=(0,), unsupported=("pcie_generation", "pcie_width", "pcie_max_generation",
                                                             "pcie_max_width"))
    found = nvml_link_bandwidth(gpu_state.describe(nvml))
    assert found.gbps is None and found.source is None and found.basis.startswith(NO_LINK)
    assert "NVLink not supported" in found.basis


def test_without_nvidia_ml_py_no_link_is_recorded_with_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    found = nvml_link_bandwidth(gpu_state.describe())
    assert found.gbps is None and found.basis == f"{NO_LINK} (NVML: nvidia-ml-py is not installed " \
                                                 "(pip install nvidia-ml-py))"
    assert nvml_link_bandwidth(None).basis == f"{NO_LINK} (NVML: no NVIDIA GPU here (no nvidia-smi))"


def test_the_tables_agree_with_pynvml_and_with_pcie_line_encoding():
    pynvml = pytest.importorskip("pynvml")
    for enum, (major, minor) in gpu_state.NVLINK_VERSIONS.items():
        name = f"NVML_NVLINK_VERSION_{major}_{minor}"
        assert getattr(pynvml, name, enum) == enum, name  # names the installed pynvml lacks are newer
    assert pynvml.NVML_FEATURE_ENABLED == gpu_state.NVML_FEATURE_ENABLED
    rates = {1: 2.5 * 8 / 10, 2: 5 * 8 / 10, 3: 8 * 128 / 130, 4: 16 * 128 / 130, 5: 32 * 128 / 130,
             6: 64 * 242 / 256}  # GT/s × encoding, Gb/s per lane per direction
    assert {g: pytest.approx(r / 8, abs=1e-3) for g, r in rates.items()} == gpu_state.PCIE_GBPS_PER_LANE


# ---------------------------------------------------------------------------------------------- the user's figure
def test_the_users_figure_wins_over_nvmls_and_names_it():
    block = gpu_state.describe(fake_nvml(devices=2))
    given = link_bandwidth(block, 300.0)
    assert given == LinkBandwidth(300.0, "user", "given with --link-bandwidth 300", "link",
                                  f"NVML: {H100_BASIS}, each of 2 GPUs")
    assert link_bandwidth(block) == nvml_link_bandwidth(block)
    assert link_bandwidth(None, 12.5).instead_of is None  # no NVML figure to win over
    assert LinkBandwidth.from_record(given.to_record()) == given and LinkBandwidth.from_record(None) is None


def test_the_header_records_the_given_figure_over_nvml_s(monkeypatch):
    block = gpu_state.describe(fake_nvml(devices=2))
    monkeypatch.setattr(gpu_state, "describe", lambda: block)
    which = environment.shutil.which
    monkeypatch.setattr(environment.shutil, "which", lambda name: "/usr/bin/nvidia-smi" if name == "nvidia-smi"
                        else which(name))
    inside = environment.capture(link_gbps=100.0)
    outside = environment.capture()
    assert inside["link_bandwidth"] == {"gbps": 100.0, "source": "user", "basis": "given with --link-bandwidth 100",
                                        "kind": "link", "instead_of": f"NVML: {H100_BASIS}, each of 2 GPUs"}
    assert outside["link_bandwidth"]["source"] == "NVML" and outside["link_bandwidth"]["gbps"] == 450.0
    assert Environment.from_record(inside).link_bandwidth == LinkBandwidth.from_record(inside["link_bandwidth"])


# ---------------------------------------------------------------------------------------------- the CLI flag
TINY = ["--catalog", "smoke", "--backend", "torch", "--id", "smoke-gemm-64", "--pass", "forward"]


def test_run_takes_link_bandwidth_in_gb_per_s_and_records_it_in_the_header(tmp_path, monkeypatch):
    assert _parse(["run", "--link-bandwidth", "450"]).link_bandwidth == 450.0
    assert _parse(["run"]).link_bandwidth is None
    recorded = []

    def run(tasks, out, options, report, argv=None):  # what the runner writes into the header
        recorded.append(environment.capture(options.bandwidth, options.link_gbps)["link_bandwidth"])
        return {"skipped_done": 0, "failed": 0, "ok": 1}

    monkeypatch.setattr(suite.runner, "run", run)
    assert main(["run", *TINY, "--link-bandwidth", "12.5", "-o", str(tmp_path / "r.jsonl")]) == 0
    assert recorded[0]["gbps"] == 12.5 and recorded[0]["source"] == "user"


@pytest.mark.parametrize("value, message", [
    ("abc", "error: argument --link-bandwidth: invalid float value: 'abc'"),
    ("0", "error: --link-bandwidth must be a positive number of GB/s per direction, got 0.0"),
    ("-5", "error: --link-bandwidth must be a positive number of GB/s per direction, got -5.0"),
    ("nan", "error: --link-bandwidth must be a positive number of GB/s per direction, got nan"),
    ("inf", "error: --link-bandwidth must be a positive number of GB/s per direction, got inf"),
])
def test_a_bad_link_bandwidth_is_one_error_line_and_exit_2(tmp_path, monkeypatch, capsys, value, message):
    monkeypatch.setattr(suite.runner, "run", lambda *a, **k: pytest.fail("ran"))
    assert main(["run", *TINY, f"--link-bandwidth={value}", "-o", str(tmp_path / "r.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(message), err


def test_link_bandwidth_is_a_flag_of_run_only(capsys):
    assert main(["peak", "--link-bandwidth", "450"]) == 2
    assert "--link-bandwidth is an option of run, not of peak" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- the report
SIZES = (1024, 65536, 4194304)


def allreduce_results(link: LinkBandwidth | None, device: str = "gpu") -> ResultSet:
    """A torch all-reduce at three message sizes on 2 ranks, 1 ms at the largest (16.8 GB/s algbw, busbw alike),
    under a header that records ``link``."""
    env = {"hostname": "h", "cpu": {"model": "test CPU"}, "gpus": [{"name": "NVIDIA H100 80GB HBM3"}]}
    if link is not None:
        env["link_bandwidth"] = link.to_record()
    records = []
    for elements in SIZES:
        op = AllReduce(elements=elements, ranks=2)
        samples = [1e-3 * elements / SIZES[-1] * b for b in (0.98, 0.99, 1.0, 1.01, 1.02)]
        records.append({
            "record": "measurement", "run_id": "r1", "case": f"ar-{elements}", "backend": "torch", "device": device,
            "dtype": "fp32", "pass": "forward", "mode": "eager", "layout": "processes", "math": "strict",
            "threads": 1, "options": {}, "op": "allreduce", "dims": op_to_dict(op), "shape": op.describe(),
            "provenance": {"network": "sweep", "layer": str(elements), "source": "test"}, "count": 1, "tags": [],
            "flops": op.flops("forward"), "bytes": op.min_bytes("forward", 4), "status": "ok",
            "default_variant": True, "block_times": samples, "calls_per_block": 1,
            "stats": {"median": float(np.median(samples)), "ci_low": min(samples), "ci_high": max(samples)}})
    return ResultSet(headers=[RunHeader.from_record({"record": "header", "run_id": "r1", "environment": env})],
                     workers=[], measurements=[Measurement.from_record(r) for r in records])


def link_lines(fig) -> list:
    return [line for ax in fig.axes for line in ax.get_lines() if line.get_linestyle() == "-."]


def test_the_report_draws_the_nvml_link_and_compares_busbw_with_it_per_direction():
    found = nvml_link_bandwidth(gpu_state.describe(fake_nvml(devices=2)))
    a = analysis.analyze(allreduce_results(found))
    fig = figures.bus_bandwidth(a.pooled[a.pooled["op"].eq("allreduce")], a.palette)
    (line,) = link_lines(fig)
    assert list(line.get_ydata()) == [450.0, 450.0]
    label = " ".join(line.get_label().split())
    assert label == f"link 450 GB/s per direction (NVML: {H100_BASIS}, each of 2 GPUs)"
    text = summary.bus_section(a, "allreduce")[0]["headline"]
    busbw = 4 * SIZES[-1] / 1e-3 / 1e9  # 2(R-1)/R = 1 at two ranks
    assert f"the highest is {100 * busbw / 450:.2g}% of the NVLink bandwidth, 450 GB/s per direction by NVML " \
           f"({H100_BASIS}, each of 2 GPUs)." in text
    assert "Bus bandwidth compares with a link's bandwidth per direction" in text and NO_LINK not in text.lower()


def test_the_users_figure_is_drawn_and_named_as_given():
    given = link_bandwidth(gpu_state.describe(fake_nvml(devices=2)), 100.0)
    a = analysis.analyze(allreduce_results(given))
    (line,) = link_lines(figures.bus_bandwidth(a.pooled, a.palette))
    assert list(line.get_ydata()) == [100.0, 100.0] and "given with --link-bandwidth 100" in line.get_label()
    text = summary.bus_section(a, "allreduce")[0]["headline"]
    assert "of the link bandwidth, 100 GB/s per direction as given with --link-bandwidth (over NVML: " \
           f"{H100_BASIS}, each of 2 GPUs)." in text


@pytest.mark.parametrize("link", [None, LinkBandwidth(None, basis=f"{NO_LINK} (NVML: no NVIDIA GPU here)")])
def test_without_a_link_bandwidth_no_line_is_drawn_and_the_text_says_so_once(link):
    a = analysis.analyze(allreduce_results(link))
    assert link_lines(figures.bus_bandwidth(a.pooled, a.palette)) == []
    text = " ".join(b["headline"] for b in summary.bus_section(a, "allreduce"))
    assert text.count("No link bandwidth: none from NVML, none given with --link-bandwidth.") == 1
    assert "%" not in text.split("No link bandwidth")[1]  # no comparison without a basis


def test_nvmls_gpu_link_is_not_the_link_of_cpu_ranks_but_the_users_figure_is():
    nvml = nvml_link_bandwidth(gpu_state.describe(fake_nvml(devices=2)))
    cpu = analysis.analyze(allreduce_results(nvml, device="cpu"))
    assert math.isnan(cpu.pooled["link_gbps"].max())
    assert "No link bandwidth for cpu ranks: NVML's is the GPUs' interconnect, none given with --link-bandwidth." \
           in summary.bus_section(cpu, "allreduce")[0]["headline"]
    given = analysis.analyze(allreduce_results(link_bandwidth(None, 10.0), device="cpu"))
    assert given.pooled["link_gbps"].max() == 10.0


def test_the_environment_facts_state_the_link():
    from reports import site

    found = nvml_link_bandwidth(gpu_state.describe(fake_nvml(devices=2)))
    header = RunHeader.from_record({"run_id": "r1", "environment": {"link_bandwidth": found.to_record()}})
    assert site._env_facts(header, [])["link bandwidth"] == peak.link_words(found)
    assert "link bandwidth" not in site._env_facts(RunHeader.from_record({"run_id": "r1"}), [])


def test_the_memory_line_says_whether_it_was_measured_or_is_a_datasheet_figure():
    """GPU ranks compare with the H100's datasheet HBM bandwidth (3,350 GB/s), said as such, not as a measured copy;
    CPU ranks without a run --bandwidth header have none, and the text says how to get it."""
    gpu = analysis.analyze(allreduce_results(None))
    text = summary.bus_section(gpu, "allreduce")[0]["headline"]
    busbw = 4 * SIZES[-1] / 1e-3 / 1e9
    assert (f", {busbw / 3350:.0%} of the memory bandwidth (3,350 GB/s, theoretical (datasheet): NVIDIA H100 SXM "
            "datasheet memory bandwidth).") in text and "measured here" not in text
    (line,) = [ln for ax in figures.bus_bandwidth(gpu.pooled, gpu.palette).axes for ln in ax.get_lines()
               if ln.get_linestyle() == ":"]
    assert line.get_label() == "memory 3,350 GB/s (theoretical (datasheet))"
    cpu = summary.bus_section(analysis.analyze(allreduce_results(None, device="cpu")), "allreduce")[0]["headline"]
    assert "no memory bandwidth is known here (on a CPU: a run with --bandwidth measures it)." in cpu
