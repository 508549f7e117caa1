"""``python -m suite selfcheck``: is opbench's timing trustworthy on this machine?

Times a few ops two ways in one process, with opbench's timing (through the PyTorch backend) and with
torch.utils.benchmark (an independent, well-kept timer), and prints their ratio; then measures the machine's
noise as the IQR/median of a fixed GEMM's blocks, so a user knows how far apart two results must be to differ.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from backends.base import Settings, Variant
from suite.ops import Conv2d, Gemm, Op
from suite.reference import make_inputs
from suite.stats import summarize
from suite.timing import TimingConfig, measure

OPS: list[tuple[str, Op, str]] = [
    ("GEMM 512³", Gemm(512, 512, 512), "forward"),
    ("GEMM 512³", Gemm(512, 512, 512), "backward"),
    ("conv N8 C64 28² K64 3×3", Conv2d(8, 64, 28, 28, 64, 3, 3, padding=(1, 1, 1, 1)), "forward"),
    ("conv N8 C64 28² K64 3×3", Conv2d(8, 64, 28, 28, 64, 3, 3, padding=(1, 1, 1, 1)), "backward_data"),
]
NOISE_OP = Gemm(256, 256, 256)


def selfcheck(console: Console, threads: int | None = None) -> int:
    import torch.utils.benchmark as tb

    from backends.torch_backend import TorchBackend

    settings = Settings(device="cpu", threads=threads)
    backend = TorchBackend(settings)
    flags = backend.configure(settings)
    table = Table(title=f"opbench vs torch.utils.benchmark (torch {backend.versions()['torch']}, "
                        f"{flags['threads']} threads, fp32, same process)")
    for col in ("op", "pass", "opbench median", "95% CI", "torch.utils.benchmark median", "ratio"):
        table.add_column(col, justify="left" if col in ("op", "pass") else "right")
    worst = 0.0
    for label, op, pass_ in OPS:
        prepared = backend.prepare(op, Variant(pass_, "fp32", "eager", ""), make_inputs(op))
        samples = measure(prepared.run_block, TimingConfig())
        ours = summarize(samples.block_times, samples.calls_per_block, samples.stable)
        # the same zero-argument step, timed by torch's own adaptive timer
        theirs = tb.Timer("run(1)", globals={"run": prepared.run_block},
                          num_threads=flags["threads"]).adaptive_autorange(min_run_time=0.5).median
        ratio = ours.median / theirs
        worst = max(worst, abs(ratio - 1))
        table.add_row(label, pass_, f"{ours.median * 1e6:,.1f} µs",
                      f"{ours.ci_low * 1e6:,.1f} – {ours.ci_high * 1e6:,.1f}", f"{theirs * 1e6:,.1f} µs",
                      f"{ratio:.3f}")
    console.print(table)

    prepared = backend.prepare(NOISE_OP, Variant("forward"), make_inputs(NOISE_OP))
    noise = [measure(prepared.run_block, TimingConfig(min_blocks=15, max_blocks=15, target_rel_iqr=0.0))
             for _ in range(3)]
    spread = [summarize(s.block_times, s.calls_per_block).rel_iqr for s in noise]
    medians = [summarize(s.block_times, s.calls_per_block).median for s in noise]
    drift = (max(medians) - min(medians)) / min(medians)
    console.print(f"machine noise: IQR/median of a 256³ GEMM's blocks = {', '.join(f'{x:.1%}' for x in spread)} "
                  f"(3 runs); the median moved {drift:.1%} between runs.")
    console.print(f"largest opbench / torch.utils.benchmark difference: {worst:.1%}. Treat differences between "
                  f"results smaller than about {max(worst, drift, max(spread)):.0%} as noise on this machine.")
    return 0
