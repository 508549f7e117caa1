"""All-reduce across ranks, framework-free: the op's rates (nccl-tests' algbw and busbw), exact per-rank inputs, the
catalog entries, ranks that agree on every timing decision, one measurement from every rank's answer, and where a
rank learns its place (torchrun's variables, srun's, its share of the CPUs)."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from suite import ranks, runner, show, worker
from suite.catalog import load_catalog
from suite.cli import at_ranks, progress_line
from suite.ops import AllReduce, op_from_dict, op_to_dict
from suite.reference import ALLREDUCE_BOUND, expected, make_inputs, reduced, reference_inputs, round_to
from suite.results import Measurement, MeasurementKey
from suite.stats import summarize
from suite.timing import TimingConfig, measure

DEEPBENCH_CSV = Path("/work/shared/data/deepbench_allreduce.csv")


# ------------------------------------------------------------------------------------------------ the op
@pytest.mark.parametrize(("ranks_", "factor"), [(1, 0.0), (2, 1.0), (4, 1.5), (8, 1.75)])
def test_bus_factor_is_nccl_tests_2_r_minus_1_over_r(ranks_, factor):
    assert AllReduce(1000, ranks_).bus_factor == factor


def test_bytes_are_the_message_and_flops_the_additions_of_the_sum():
    op = AllReduce(elements=1000, ranks=4)
    assert op.min_bytes("forward", 4) == 4000 and op.min_bytes("forward", 2) == 2000
    assert op.flops("forward") == 3000
    assert op.passes == ("forward",) and op.outputs("forward") == ("y",)
    with pytest.raises(ValueError, match="only its forward"):
        op.flops("backward")
    assert op_from_dict(op_to_dict(op)) == op


def test_measurement_records_algbw_and_busbw():
    op = AllReduce(elements=1_000_000, ranks=4)
    key = MeasurementKey("c", "torch", "cpu", "fp32", "forward", "eager", "processes", "strict", 1, (), "warm")
    m = Measurement(key, "ok", op=op, bytes=op.min_bytes("forward", 4), flops=op.flops(),
                    block_times=(0.002,) * 7, calls_per_block=2, stats=summarize([0.002] * 7, 2))
    assert m.gbps == pytest.approx(4e6 / 1e-3 / 1e9)  # 4 MB in 1 ms: algbw 4 GB/s
    assert m.busbw_gbps == pytest.approx(4.0 * 1.5)
    record = m.to_record()
    assert record["algbw_gbps"] == pytest.approx(4.0) and record["busbw_gbps"] == pytest.approx(6.0)
    assert Measurement.from_record(record).to_record() == record  # the rates are not kept as extra facts
    assert "busbw      6 GB/s" in progress_line(m) and "GFLOP/s" not in progress_line(m)
    shown = show.row(m)  # `show` reads a collective by its bus bandwidth too, in the table, CSV and JSON
    assert shown["busbw_gbps"] == pytest.approx(6.0) and shown["gflops"] is None
    assert show.rate_text(shown["gflops"], shown["busbw_gbps"]) == "busbw      6 GB/s"
    assert show.rate_text(1234.5, None) == "  1234.5 GFLOP/s" and show.rate_text(None, None) == ""


# ------------------------------------------------------------------------------------------------ inputs
def test_each_rank_has_its_own_small_integers_and_the_reference_is_their_exact_sum():
    op = AllReduce(elements=5000, ranks=3)
    buffers = [make_inputs(op, 7, rank)["x"] for rank in range(3)]
    assert all(b.dtype == np.float32 and np.all(b == np.round(b)) and np.abs(b).max() <= ALLREDUCE_BOUND
               for b in buffers)
    assert not np.array_equal(buffers[0], buffers[1])
    assert np.array_equal(expected(op, 7, "forward")["y"], np.sum(buffers, axis=0, dtype=np.float64))
    assert reduced(op) == op  # a collective is checked on the very buffer it times


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_every_partial_sum_of_128_ranks_is_exact_in_every_dtype(dtype):
    op = AllReduce(elements=2000, ranks=128)
    worst = np.arange(-128 * ALLREDUCE_BOUND, 128 * ALLREDUCE_BOUND + 1, dtype=np.float64)
    assert np.array_equal(round_to(worst, dtype), worst)
    total = reference_inputs(op, 0)["x"]
    assert np.array_equal(round_to(total, dtype), total)


# ------------------------------------------------------------------------------------------------ catalog
def test_the_allreduce_subset_holds_deepbenchs_seven_sizes_with_their_csv_lines():
    rows = list(csv.DictReader(DEEPBENCH_CSV.open())) if DEEPBENCH_CSV.exists() else None
    cases = load_catalog().subset("allreduce")
    deepbench = [c for c in cases if "deepbench-allreduce" in c.tags]
    assert len(deepbench) == 7
    if rows is not None:
        assert [c.op.elements for c in deepbench] == [int(r["size_floats"]) for r in rows]
        for line, (case, row) in enumerate(zip(deepbench, rows, strict=True), start=2):
            assert f"repeat={row['repeat']}" in case.provenance.derivation
            assert f"(line {line})" in case.provenance.derivation
    sweep = sorted(c.op.elements for c in cases if "allreduce-sweep" in c.tags)
    assert sweep[0] <= 1024 and sweep[-1] >= 64_500_000 and len(sweep) >= 8


def test_allreduce_is_in_no_subset_the_main_jobs_run():
    catalog = load_catalog()
    for name in ("smoke", "quick", "full", "deepbench", "sweeps"):
        assert not [c.id for c in catalog.subset(name) if c.op.kind == "allreduce"], name


def test_a_run_at_r_ranks_measures_its_own_case_ids():
    case = next(c for c in load_catalog().subset("allreduce") if c.op.elements == 100000)
    two, four = at_ranks(case, 2), at_ranks(case, 4)
    assert (two.id, two.op.ranks) == ("db-allreduce-100000-r2", 2)
    assert (four.id, four.op.ranks) == ("db-allreduce-100000-r4", 4)
    gemm = next(c for c in load_catalog().subset("seed") if c.op.kind == "gemm")
    assert at_ranks(gemm, 4) is gemm


# ------------------------------------------------------------------------------------------------ timing
def _rank_threads(costs: list[list[float]], config: TimingConfig) -> list:
    """Run ``measure`` in one thread per rank, each on a fake clock advanced by its own call costs (cost i for its
    i-th call), with ``agree`` the maximum over the threads."""
    count = len(costs)
    barrier, slots = threading.Barrier(count), [0.0] * count
    out: list = [None] * count

    def rank(r: int) -> None:
        now, calls = [0.0], [0]

        def clock() -> float:
            return now[0]

        def run_block(n: int) -> None:
            for _ in range(n):
                now[0] += costs[r][min(calls[0], len(costs[r]) - 1)]
                calls[0] += 1

        def agree(value: float) -> float:
            slots[r] = value
            barrier.wait()
            top = max(slots)
            barrier.wait()
            return top

        out[r] = measure(run_block, config, clock, agree)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return out


def test_ranks_time_the_same_blocks_and_keep_the_slowest_ranks_times():
    config = TimingConfig(warmup_s=0.01, target_block_s=0.01, min_blocks=7, max_time_s=2.0)
    rng = np.random.default_rng(0)
    fast = list(1e-4 * (1 + 0.2 * rng.random(5000)))
    slow = [2 * c for c in fast[::-1]]  # rank 1 is about twice as slow, with its own noise
    a, b = _rank_threads([fast, slow], config)
    assert a == b  # the same calls per block, the same block count, the same times: no rank waits forever
    assert min(a.block_times) / a.calls_per_block >= 2e-4 * 0.99  # every block at least the slow rank's time


# ------------------------------------------------------------------------------------------------ combining ranks
def _answer(status="ok", error=0.0, flags=(), reason=None):
    return {"status": status, "reason": reason, "block_times": [0.1] * 7, "calls_per_block": 1,
            "stats": {"median": 0.1, "flags": list(flags)},
            "check": {"status": "pass" if error <= 1e-5 else "fail", "errors": {"y": error}, "tolerance": 2e-5},
            "details": {"in_place": True}}


HELLO = {"ranks": [{"rank": 0, "pid": 1, "cpus": [0]}, {"rank": 1, "pid": 2, "cpus": [1]}],
         "joined": {"communication": "gloo"}}


def test_one_measurement_from_every_ranks_answer_takes_the_worst_rank():
    combined = runner.combine([_answer(flags=["noisy"]), _answer(error=1.0, flags=["contended"])], HELLO)
    assert combined["check"]["status"] == "fail" and combined["check"]["errors"]["y"] == 1.0
    assert combined["stats"]["flags"] == ["noisy", "contended"]
    assert combined["details"]["communication"] == "gloo" and len(combined["details"]["ranks"]) == 2
    failed = runner.combine([_answer(), _answer("error", reason="RuntimeError: boom")], HELLO)
    assert failed["status"] == "error" and failed["reason"] == "rank 1: RuntimeError: boom"
    refused = runner.combine([_answer("unsupported", reason="no")] * 2, HELLO)
    assert refused["status"] == "unsupported" and refused["reason"] == "no"


def test_the_worker_record_of_ranks_leaves_out_what_differs_by_rank():
    record = runner._rank_worker({"flags": {"threads": 1, "cpu_affinity": [0]}, "versions": {"jax": "1"}},
                                 [{"rank": 0, "pid": 5, "cpus": [0]}, {"rank": 1, "pid": 6, "cpus": [1]}])
    assert record["flags"] == {"threads": 1}
    assert [r["cpus"] for r in record["ranks"]] == [[0], [1]]


# ------------------------------------------------------------------------------------------------ where a rank is
def test_local_ranks_are_pinned_to_disjoint_cpus(monkeypatch):
    pinned: dict[int, list[int]] = {}
    for local_ranks, cpus in ((2, [0, 1]), (2, [0, 1, 2, 3, 4]), (4, [0, 1]), (3, [4, 5, 6, 7, 8, 9])):
        for local_rank in range(local_ranks):
            monkeypatch.setattr(worker.os, "sched_getaffinity", lambda _pid, cpus=cpus: set(cpus))
            monkeypatch.setattr(worker.os, "sched_setaffinity",
                                lambda _pid, mine, r=local_rank: pinned.__setitem__(r, list(mine)))
            assert worker.pin(local_rank, local_ranks) == pinned[local_rank]
        shares = [set(pinned[r]) for r in range(local_ranks)]
        assert all(shares) and set().union(*shares) <= set(cpus)
        if local_ranks <= len(cpus):
            assert sum(map(len, shares)) == len(set().union(*shares))  # disjoint
        pinned.clear()


def test_a_rank_reads_torchruns_variables(monkeypatch):
    env = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "node1",
           "MASTER_PORT": "29500", "OPBENCH_LAUNCHER": "torchrun"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    group = worker.rank_group()
    assert (group.rank, group.ranks, group.local_rank, group.local_ranks) == (3, 8, 1, 2)
    assert (group.address, group.port, group.launcher) == ("node1", 29500, "torchrun")


def test_an_srun_task_is_a_rank_with_slurms_numbers():
    env = {"SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "5", "SLURM_LOCALID": "0", "SLURM_NODEID": "1",
           "SLURM_STEP_TASKS_PER_NODE": "3,2", "MASTER_ADDR": "node1", "MASTER_PORT": "29500"}
    assert ranks.slurm_rank(env) == {"RANK": "3", "WORLD_SIZE": "5", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2",
                                     "MASTER_ADDR": "node1", "MASTER_PORT": "29500", "OPBENCH_LAUNCHER": "srun"}
    assert ranks.tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    batch_script = {"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "MASTER_ADDR": "node1", "MASTER_PORT": "1"}
    assert ranks.slurm_rank(batch_script) is None  # the job script itself is no rank: srun starts the ranks
    assert ranks.slurm_rank({"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1"}) is None
    assert ranks.slurm_rank({}) is None
    with pytest.raises(ranks.RanksError, match="MASTER_ADDR and MASTER_PORT"):
        ranks.slurm_rank({"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "2"})


def test_busbw_of_one_rank_is_zero_not_a_division():
    assert math.isclose(AllReduce(10, 1).bus_factor, 0.0)


def _suite(*args: str) -> str:
    listed = subprocess.run([sys.executable, "-m", "suite", *args], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent.parent, timeout=120)
    assert listed.returncode == 0, listed.stderr
    return listed.stdout


def test_list_subsets_lists_allreduce():
    assert "│ allreduce " in _suite("list", "--subsets")


def test_op_allreduce_alone_selects_every_allreduce_case_at_the_ranks_given():
    listed = json.loads(_suite("list", "--op", "allreduce", "--ranks", "4", "--format", "json"))
    assert len(listed) == len(load_catalog().subset("allreduce"))
    assert all(c["id"].endswith("-r4") and c["dims"]["ranks"] == 4 for c in listed)
    assert {c["op"] for c in json.loads(_suite("list", "--op", "conv2d", "--format", "json"))} == {"conv2d"}


# ------------------------------------------------------------------------------------------------ GPU paths, faked
def test_a_torch_rank_on_a_gpu_joins_over_nccl_on_its_own_gpu(monkeypatch):
    """No GPU here: torch's CUDA and process-group calls are faked, and what join asks of them is checked."""
    torch = pytest.importorskip("torch")
    from types import SimpleNamespace

    from backends.base import RankGroup, Settings
    from backends.torch_backend import TorchBackend

    calls: dict[str, object] = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: calls.__setitem__("device", index))
    monkeypatch.setattr(torch.distributed, "init_process_group",
                        lambda backend, **kw: calls.__setitem__("init", (backend, kw["rank"], kw["world_size"])))
    monkeypatch.setattr(torch.distributed, "new_group", lambda backend: calls.__setitem__("agree", backend) or "g")
    monkeypatch.setattr(torch.distributed, "get_backend", lambda group=None: "nccl")
    backend = TorchBackend(Settings(device="gpu"))
    joined = backend.join(RankGroup(rank=5, ranks=8, local_rank=1, local_ranks=4, address="n1", port=1))
    assert calls == {"device": 1, "init": ("nccl", 5, 8), "agree": "gloo"}  # timing agrees over gloo, on the host
    assert joined["communication"] == "nccl" and (backend.rank, backend.ranks) == (5, 8)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: SimpleNamespace(uuid=f"uuid-{index}"))
    assert backend.gpu_id() == "GPU-uuid-1"  # NVML samples the rank's own GPU, not GPU 0


def test_jax_devices_that_disagree_fail_the_check_whichever_is_off():
    pytest.importorskip("jax")
    from types import SimpleNamespace

    from backends.base import Settings, Variant
    from backends.jax_backend import JaxBackend

    op, variant = AllReduce(elements=3, ranks=2), Variant("forward", layout="devices")
    backend = JaxBackend(Settings())

    def out(*rows):
        return SimpleNamespace(addressable_shards=[SimpleNamespace(data=np.array([row])) for row in rows])

    assert backend.to_numpy(out([2, 0, -1], [2, 0, -1]), "y", op, variant).tolist() == [2, 0, -1]
    for rows in (([2, 0, -1], [9, 0, -1]), ([9, 0, -1], [2, 0, -1])):
        assert np.isnan(backend.to_numpy(out(*rows), "y", op, variant)).all()
    assert backend.ranks_held(op, variant) == (0, 1) and backend.ranks_held(op, Variant("forward")) == (0,)
