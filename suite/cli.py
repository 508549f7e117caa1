"""``python -m suite``: one small function per subcommand; user mistakes exit 2 with one clear message."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fnmatch
import json
import math
import os
import re
import signal
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console
from rich.table import Table

import backends
from suite import missing_module, setup_advice, show
from suite.catalog import SHAPES_DIR, WHOLE_CATALOG, Case, CatalogError, did_you_mean, load_catalog
from suite.compare import CompareError
from suite.environment import usable_cpus
from suite.ops import DTYPES, FLOAT_DTYPES, INT8_FORWARD_ONLY, OP_KINDS, PASSES, with_ranks
from suite.results import SAME_BAND, UNRELIABLE_FLAGS, Measurement, ResultsError, ResultSet, read_many
from suite.stats import CONTENDED_SHARE, format_seconds
from suite.timing import TimingConfig


class _Console(Console):
    """rich's console, leaving a closed pipe to ``main`` (rich would exit 1, which here means a failed measurement)."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError


# Tables stay readable in logs and pipes, where rich would otherwise wrap at 80 columns.
console = _Console(width=None if sys.stdout.isatty() else 200)
err_console = _Console(stderr=True, width=None if sys.stderr.isatty() else 200)


DEFAULT_SUBSET = "quick"  # what a bare `run` measures: the CPU main job's cases


def print_table(table: Table) -> None:
    """A table of data on stdout: its cells are text, never rich markup (which would eat "[jax]" in
    "pip install 'opbench[jax]'")."""
    console.print(table, markup=False)


class UsageError(ValueError):
    """A mistake in the command line; printed without a traceback."""


class NothingToRun(UsageError):
    """A selection that gives nothing to run: a usage error, or with ``run --skip-empty`` a note and exit 0."""


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _choices(text: str, allowed: Iterable[str], what: str, special: tuple[str, ...] = ("all",)) -> list[str]:
    """The comma list ``text`` without repeats, every item one of ``allowed`` or a ``special`` word.

    'all' alone means every allowed value, unless the caller resolves the special words itself (modes and layouts:
    the plan picks them per backend).
    """
    allowed = list(allowed)
    values = allowed if text == "all" and special == ("all",) else list(dict.fromkeys(_csv(text)))
    if not values:
        raise UsageError(f"--{what} needs at least one value; choose from {', '.join(allowed)}")
    for value in values:
        if value not in allowed and value not in special:
            also = f" (or {' or '.join(repr(word) for word in special)})" if special else ""
            raise UsageError(f"unknown {what} {value!r}{did_you_mean(value, [*allowed, *special])}; choose from "
                             f"{', '.join(allowed)}{also}")
    return values


# ---------------------------------------------------------------------------------------------- selection
def add_selection(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("which cases")
    group.add_argument("--catalog", default=None,
                       help=f"named subset of the catalog (see `list --subsets`). Default: {DEFAULT_SUBSET!r} for "
                            f"the bundled catalog with no other selection; {WHOLE_CATALOG!r} (every case) when --id, "
                            "--tag or --shapes of your own name the cases (--op and --source only narrow)")
    group.add_argument("--id", action="append", default=[], help="case id or glob pattern (repeatable)")
    group.add_argument("--tag", action="append", default=[], help="keep cases with this tag (repeatable: any)")
    group.add_argument("--exclude-tag", action="append", default=[], metavar="TAG",
                       help="drop cases with this tag (repeatable: any), as a subset's exclude_tags do")
    group.add_argument("--op", choices=tuple(OP_KINDS), help="keep one op kind")
    group.add_argument("--source", help="keep cases whose network or source contains this text")
    group.add_argument("--shapes", action="append", default=None, metavar="DIR",
                       help="catalog folder; repeatable or a comma list, which load as one catalog ('bundled' "
                            "is the bundled one, the default): --shapes bundled,my-shapes")
    group.add_argument("--ranks", type=int, default=2, metavar="R",
                       help="all-reduce cases: across R ranks (processes; default %(default)s), each case id "
                            "suffixed -rR")


def shape_folders(values: str | list[str] | None) -> list[Path]:
    """The folders of --shapes (repeatable, each a folder or a comma list; 'bundled' = the bundled catalog)."""
    items = [values] if isinstance(values, str) else values or ["bundled"]
    return [SHAPES_DIR if part == "bundled" else Path(part).expanduser() for item in items for part in _csv(item)]


def subset_name(args: argparse.Namespace) -> str:
    """The subset ``list``, ``run`` and ``check`` select from: --catalog, else ``DEFAULT_SUBSET`` when nothing but the
    bundled catalog is named, else the whole catalog (an --id or --tag, or a folder of one's own, name cases from
    every case; --op and --source only narrow, but an --op kind the default subset lacks selects from every case),
    so ``list`` shows what ``run`` with the same flags measures."""
    if args.catalog:
        return args.catalog
    chosen = args.id or args.tag
    own = {folder.resolve() for folder in shape_folders(args.shapes)} != {SHAPES_DIR}
    if chosen or own:
        return WHOLE_CATALOG
    if args.op and not any(c.op.kind == args.op for c in load_catalog().subset(DEFAULT_SUBSET)):
        return WHOLE_CATALOG  # an op kind the default subset lacks (allreduce): every case of that kind
    return DEFAULT_SUBSET


def at_ranks(case: Case, ranks: int) -> Case:
    """An all-reduce case run across ``ranks`` ranks, under an id of its own (``<id>-r<ranks>``) so that runs at two
    rank counts are two measurements; any other case as it is."""
    if case.op.kind != "allreduce":
        return case
    return dataclasses.replace(case, id=f"{case.id}-r{ranks}", op=with_ranks(case.op, ranks))


def select(args: argparse.Namespace) -> list[Case]:
    ranks = getattr(args, "ranks", 2)
    if ranks < 1:
        raise UsageError(f"--ranks must be an integer >= 1, got {ranks}")
    catalog = load_catalog(shape_folders(args.shapes))
    cases = catalog.subset(subset_name(args))
    if args.id:
        cases = [c for c in cases if any(fnmatch.fnmatchcase(c.id, pattern) for pattern in args.id)]
    if args.tag:
        cases = [c for c in cases if set(args.tag) & set(c.tags)]
    if args.exclude_tag:
        cases = [c for c in cases if not set(args.exclude_tag) & set(c.tags)]
    if args.op:
        cases = [c for c in cases if c.op.kind == args.op]
    if args.source:
        needle = args.source.lower()
        cases = [c for c in cases if needle in f"{c.provenance.network} {c.provenance.source}".lower()]
    return [at_ranks(c, ranks) for c in cases]


def _gflop(value: float) -> str:
    return f"{value / 1e9:,.3f}" if value < 1e10 else f"{value / 1e9:,.0f}"


# ---------------------------------------------------------------------------------------------- list
def cmd_list(args: argparse.Namespace) -> int:
    """The catalog as a table, or its subsets with counts and total FLOPs."""
    if args.backends:
        return list_backends(args.format)
    if args.subsets:
        catalog = load_catalog(shape_folders(args.shapes))
        table = Table(title="catalog subsets")
        subsets = []
        for col in ("subset", "cases", *OP_KINDS, "GFLOP fwd", "GFLOP all passes", "description"):
            table.add_column(col, justify="left" if col in ("subset", "description") else "right")
        for name, subset in catalog.subsets.items():
            cases = catalog.subset(name)
            fwd = sum(c.op.flops("forward") for c in cases)
            every = sum(c.op.flops(p) for c in cases for p in c.op.passes)  # what `run --pass all` computes
            kinds = {kind: sum(c.op.kind == kind for c in cases) for kind in OP_KINDS}
            table.add_row(name, str(len(cases)), *map(str, kinds.values()), _gflop(fwd), _gflop(every),
                          subset.description)
            subsets.append({"subset": name, "cases": len(cases), "description": subset.description,
                            "flops_forward": fwd, "flops_all_passes": every, "kinds": kinds})
        if args.format == "json":
            print(json.dumps(subsets, indent=1))
        else:
            print_table(table)
        return 0
    cases = select(args)
    if args.format == "json":
        from dataclasses import asdict

        from suite.ops import op_to_dict

        print(json.dumps([{"id": c.id, "op": c.op.kind, "shape": c.op.describe(), "dims": op_to_dict(c.op),
                           "flops_forward": c.op.flops(), "count": c.count, "tags": list(c.tags),
                           "provenance": asdict(c.provenance)} for c in cases], indent=1))
        return 0
    subset = subset_name(args)
    default = not args.catalog and subset == DEFAULT_SUBSET
    hint = f", the default; --catalog {WHOLE_CATALOG} lists every case" if default else ""
    table = Table(title=f"{len(cases)} cases ({subset}{hint}); total forward "
                        f"{_gflop(sum(c.op.flops() for c in cases))} GFLOP")
    for col in ("id", "op", "shape", "GFLOP fwd", "count", "network", "layer"):
        table.add_column(col, justify="right" if col in ("GFLOP fwd", "count") else "left")
    for case in cases:
        table.add_row(case.id, case.op.kind, case.op.describe(), _gflop(case.op.flops()), str(case.count),
                      case.provenance.network, case.provenance.layer)
    print_table(table)
    return 0


def list_backends(form: str) -> int:
    """Every registered backend (entry points): its package, framework, status, modes and layouts."""
    rows, problems = [], list(backends.IGNORED)
    for name, entry in backends.REGISTRY.items():
        installed = backends.is_available(name)
        row = {"backend": name, "package": entry.package, "status": "available" if installed else "not installed",
               "framework": backends.framework_package(name) if installed else backends.install_advice(name),
               "modes": [], "layouts": {}}
        try:
            cls = backends.backend_class(name)
            row.update(modes=list(cls.modes), layouts={kind: list(names) for kind, names in cls.layouts.items()})
        except backends.BackendUnavailable as exc:
            row["status"] = "broken"
            problems.append(str(exc))
        rows.append(row)
    if form == "json":
        print(json.dumps({"backends": rows, "problems": problems}, indent=1))
        return 0
    table = Table(title=f"{len(rows)} backends (entry points {backends.GROUP})")
    for col in ("backend", "package", "status", "framework", "modes", "layouts"):
        table.add_column(col)
    for row in rows:
        table.add_row(row["backend"], row["package"], row["status"], row["framework"] or "", ", ".join(row["modes"]),
                      "; ".join(f"{kind}: {', '.join(names)}" for kind, names in row["layouts"].items()))
    print_table(table)
    for problem in problems:
        err_console.print(f"warning: {problem}", highlight=False, markup=False, soft_wrap=True)
    return 0


# ---------------------------------------------------------------------------------------------- run
def add_run_options(parser: argparse.ArgumentParser, command: str = "run") -> None:
    """The flags of ``run``; ``check`` and ``peak`` take only those they honour (the rest get fixed defaults)."""
    if command == "peak":  # the `peak` subset, forward only
        parser.set_defaults(catalog="peak", id=[], tag=[], exclude_tag=[], op=None, source=None, shapes=None,
                            passes="forward")
    else:
        add_selection(parser)
    if command == "check":  # checks every output, times nothing, writes a temporary file unless -o
        parser.set_defaults(check=True, time_cap=None, max_run_time=None, resume=False, shard=None)
    what = parser.add_argument_group("how")
    what.add_argument("--backend", default="available",
                      help=f"comma list of {', '.join(backends.REGISTRY)}, or 'available' (default)")
    what.add_argument("--device", default="cpu", help="cpu or gpu (comma list)")
    what.add_argument("--dtype", default="fp32", help=f"comma list of {', '.join(DTYPES)}, or all (the float ones: "
                      "int8, forward only, is asked for by name)")
    if command != "peak":
        what.add_argument("--pass", dest="passes", default="all",
                          help=f"comma list of {', '.join(PASSES)}, or all")
    what.add_argument("--mode", default="default", help="default, all, or names (torch: eager, compile; "
                      "tensorflow: function, eager, xla; jax: jit)")
    what.add_argument("--layout", default="default", help="default, all, or names (NCHW, channels_last, NHWC)")
    what.add_argument("--math", choices=("strict", "tf32"), default="strict",
                      help="fp32 math: strict IEEE (default) or TF32 tensor cores, set in every framework")
    if command != "check":
        what.add_argument("--l2", choices=("warm", "cold"), default="warm",
                          help="GPU cache state: warm (default: calls back to back, operands may stay in L2) or "
                               "cold (a buffer larger than L2 written before every call, each call timed alone)")
    what.add_argument("--threads", type=int, default=usable_cpus(),
                      help="CPU threads for every framework (default: all usable CPUs, %(default)s here)")
    what.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                      help="backend knob, recorded with the results (e.g. ynn_conv=off for jax on CPU)")
    if command != "check":
        what.add_argument("--no-check", dest="check", action="store_false",
                          help="skip the numerical check against the float64 reference before timing")
    what.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default %(default)s)")
    if command != "check":
        what.add_argument("--bandwidth", action="store_true",
                          help="also measure main-memory bandwidth (a large copy, a few seconds) into the results "
                               "header: the CPU roofline's memory roof (peak always does)")
    if command == "run":
        what.add_argument("--skip-empty", action="store_true",
                          help="a selection that gives nothing to run exits 0 with a note, not error 2: for a "
                               "command that narrows whatever catalog it is given (tox's variant commands)")
        what.add_argument("--link-bandwidth", type=float, default=None, metavar="GBPS",
                          help="the link bandwidth between the ranks, GB/s per direction, recorded in the results "
                               "header (over NVML's NVLink or PCIe figure): the all-reduce figures' link line")
    limits = parser.add_argument_group("limits")
    if command != "check":
        limits.add_argument("--time-cap", type=float, default=TimingConfig.max_time_s, metavar="SECONDS",
                            help="seconds of timing per measurement before it is called unstable "
                                 "(default %(default)s)")
        limits.add_argument("--block-time", type=float, default=TimingConfig.target_block_s, metavar="SECONDS",
                            help="target length of a timed block (back-to-back calls closed by one sync; default "
                                 "%(default)s): shorter blocks reach the block count sooner, each still far above "
                                 "the sync's cost; recorded in the results header")
    limits.add_argument("--case-timeout", type=float, default=300.0, metavar="SECONDS",
                        help="seconds per measurement, compile included, before its worker is killed "
                             "(default %(default)s)")
    if command == "check":
        parser.add_argument("-o", "--output", default=None,
                            help="keep the check's records in this results file (default: a temporary file)")
        return
    limits.add_argument("--max-run-time", type=float, default=None, metavar="SECONDS",
                        help="seconds after which no new measurement starts (the rest can be --resume'd)")
    parser.add_argument("-o", "--output", default=None, help="results file (.jsonl); default results/<time>.jsonl"
                        + (" (peak: results/peak-<device>.jsonl)" if command == "peak" else ""))
    parser.add_argument("--resume", action="store_true", help="continue a results file, skipping what it holds")
    parser.add_argument("--retry-failed", action="store_true",
                        help="continue a results file (implies --resume) and measure again what failed there "
                             "(error, crash, timeout, out of memory, failed check); the new record replaces the "
                             "old, which it names in retry_of")
    parser.add_argument("--shard", default=None, metavar="I/N", help="run part I of N (whole cases per part)")


def _parse_options(items: list[str]) -> dict[str, str]:
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--option takes KEY=VALUE, got {item!r}")
        options[key] = value
    return options


def _parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard takes I/N, e.g. 2/4, got {text!r}") from None
    if not 1 <= index <= count:
        raise UsageError(f"--shard {text}: I must be between 1 and N")
    return index, count


def _backend_names(text: str) -> list[str]:
    if text == "available":
        for problem in backends.problems():  # broken plugins are left out, and say why
            err_console.print(f"warning: {problem}", highlight=False, markup=False, soft_wrap=True)
        names = backends.available()
        if not names:
            raise UsageError("no framework is installed here; install one (pip install 'opbench[torch]') or use tox")
        return names
    named = ",".join(backends.ALIASES.get(name, name) for name in _csv(text))
    for name in _csv(named):
        if name in backends.TOX_ENV and name not in backends.REGISTRY:  # opbench's own: its metadata is missing
            raise UsageError(f"backend {name!r} is not registered: opbench is not installed in this Python "
                             f"({sys.executable}): {setup_advice()}")
    names = _choices(named, backends.REGISTRY, "backend", ("available",))
    for name in names:
        if not backends.is_available(name):
            backends.load(name)  # raises BackendUnavailable with install advice
    return names


def build_plan(args: argparse.Namespace):
    from suite.runner import plan, shard

    cases = select(args)
    devices = _choices(args.device, ("cpu", "gpu"), "device")
    names = _backend_names(args.backend)
    classes = [backends.backend_class(name) for name in names]
    modes = _choices(args.mode, dict.fromkeys(m for cls in classes for m in cls.modes), "mode", ("default", "all"))
    layouts = _choices(args.layout, dict.fromkeys(layout for cls in classes for kind in cls.layouts.values()
                                                  for layout in kind), "layout", ("default", "all"))
    l2 = getattr(args, "l2", "warm")
    if l2 == "cold" and "cpu" in devices:
        raise UsageError("--l2 cold is for GPUs: on a CPU each framework thread keeps operands in its own core's "
                         "cache, which one buffer write does not clear; use --device gpu, or --l2 warm")
    dtypes = list(FLOAT_DTYPES) if args.dtype == "all" else _choices(args.dtype, DTYPES, "dtype")
    passes = _choices(args.passes, PASSES, "pass")
    if "forward" not in passes and all(dtype == "int8" for dtype in dtypes):
        raise UsageError(f"--dtype int8 with --pass {args.passes}: {INT8_FORWARD_ONLY} (--pass forward)")
    if not cases:  # after every flag is checked: --skip-empty forgives an empty selection, not a mistake
        raise NothingToRun("no case matches the selection; see `python -m suite list`")
    if not any(p in case.op.passes for case in cases for p in passes):  # a pass an op lacks is not planned
        kinds = ", ".join(f"{kind}: {', '.join(OP_KINDS[kind].passes)}" for kind in dict.fromkeys(c.op.kind
                                                                                                  for c in cases))
        raise NothingToRun(f"no selected case has --pass {args.passes} (passes by op kind: {kinds})")
    tasks = plan(cases, names, devices, dtypes, passes, modes, layouts, args.math, args.threads,
                 _parse_options(args.option), l2)
    part = _parse_shard(args.shard)
    return shard(tasks, *part) if part else tasks


def cmd_run(args: argparse.Namespace) -> int:
    """Measure the selected cases; results go to a JSON Lines file as they finish."""
    from suite import runner
    from suite.runner import RunOptions, check_output, preflight

    _parse_limits(args)
    try:
        tasks = build_plan(args)
        if not tasks:
            offered = "; ".join(f"{cls.name}: modes {', '.join(cls.modes)}, layouts "
                                f"{', '.join(dict.fromkeys(sum(cls.layouts.values(), ())))}"
                                for cls in map(backends.backend_class, _backend_names(args.backend)))
            raise NothingToRun(f"the selection gives nothing to run: no chosen backend offers --mode {args.mode} "
                               f"with --layout {args.layout} ({offered})")
    except NothingToRun as nothing:
        if not args.skip_empty:
            raise
        print(f"nothing to run, skipped (--skip-empty): {nothing}")
        return 0
    out = Path(args.output if args.output is not None else f"results/{datetime.now():%Y%m%d-%H%M%S}.jsonl")
    args.resume = args.resume or args.retry_failed
    check_output(out, args.resume)  # before the progress display, so a refusal is the only output
    preflight((t.group for t in tasks), out.with_suffix(".worker.log"))  # a GPU no framework sees: refuse now
    options = RunOptions(timing=TimingConfig(max_time_s=args.time_cap, target_block_s=args.block_time),
                         check=args.check, seed=args.seed,
                         case_timeout_s=args.case_timeout, run_time_cap_s=args.max_run_time, resume=args.resume,
                         retry_failed=args.retry_failed, preflight=False, bandwidth=args.bandwidth,
                         link_gbps=getattr(args, "link_bandwidth", None))
    try:
        with _progress("measuring", len(tasks), each=True) as report:
            counts = runner.run(tasks, out, options, report, argv=sys.argv)
        flagged = report.flagged
    except KeyboardInterrupt:
        err_console.print(f"interrupted: every finished measurement is in {out}; run the same command with "
                          "--resume to continue", highlight=False, markup=False, soft_wrap=True)
        return 130
    summary = ", ".join(f"{n} {COUNT_WORDS.get(status, status)}" for status, n in counts.items()
                        if n and status != "failed")
    console.print(f"{out}: {summary}", highlight=False, markup=False)
    for flag, when in SLOWED_BY.items():
        if flagged[flag]:
            n = flagged[flag]
            many = n > 1
            err_console.print(f"{n} measurement{'s were' if many else ' was'} timed while {when} (flag {flag}): "
                              f"{'their times' if many else 'its time'} may be too slow; python -m suite show {out} "
                              f"and the report mark {'them' if many else 'it'}",
                              highlight=False, markup=False, soft_wrap=True)
    if counts.get("not_started"):
        err_console.print(f"stopped at --max-run-time {args.max_run_time:g} s: {counts['not_started']} "
                          f"measurements not started; run the same command with --resume to continue",
                          highlight=False, markup=False, soft_wrap=True)
    if counts["failed"]:
        err_console.print(f"{counts['failed']} of {len(tasks)} measurements failed (error, crash, timeout, out of "
                          f"memory or a failed numerical check): exit status 1; every record is in {out} "
                          f"(python -m suite show {out} --status error,crashed,timeout,oom); the same command "
                          "with --retry-failed measures them again",
                          highlight=False, markup=False, soft_wrap=True)
        return 1
    return 0


# The summary's words for the counts that are not statuses (the statuses are what `show --status` takes).
COUNT_WORDS = {"skipped_done": "already in the file", "not_started": "not started"}
# Flags that say a time may be too slow because of the machine, not the framework: the summary counts them.
SLOWED_BY = {"contended": f"other processes took at least {CONTENDED_SHARE:.0%} of the usable CPUs' time",
             "throttled": "the GPU ran below the clocks it was asked for (an NVML throttle reason)"}


def progress_line(m: Measurement) -> str:
    """One finished measurement as the progress display prints it, with its timing flags."""
    k = m.key
    rate = show.rate_text(m.tflops * 1e3, m.busbw_gbps)
    timing = f"{format_seconds(m.median)}{'  ' + rate if rate else ''}" if m.stats else ""
    return (f"{m.status:<11} {k.backend:<10} {k.pass_:<15} {k.dtype} {k.mode:<8} {k.case:<40} {timing} "
            f"{m.check.status if m.check else ''} {' '.join(m.timing_flags)} {m.reason or ''}")[:240]


class _Reporter:
    """The runner's reporter behind a progress bar: advances it, prints a line per measurement (with ``each``) and
    counts the timing flags of this run's measurements."""

    def __init__(self, progress: Any, bar: Any, each: bool):
        self.progress, self.bar, self.each = progress, bar, each
        self.flagged: Counter[str] = Counter()

    def __call__(self, task: object, measurement: Measurement) -> None:
        self.flagged.update(measurement.timing_flags)
        if self.each:
            self.progress.console.print(progress_line(measurement), highlight=False, markup=False)
        self.progress.advance(self.bar)


@contextlib.contextmanager
def _progress(label: str, total: int, each: bool) -> Iterator[_Reporter]:
    """A progress bar on stderr for ``total`` measurements; yields the runner's reporter."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=not each) as progress:
        bar = progress.add_task(label, total=total)

        yield _Reporter(progress, bar, each)
        progress.update(bar, completed=total)


def _parse_limits(args: argparse.Namespace) -> None:
    """Limits must be positive: a zero or negative one would time out or skip every measurement."""
    for flag, value in (("--time-cap", args.time_cap), ("--block-time", getattr(args, "block_time", None)),
                        ("--case-timeout", args.case_timeout),
                        ("--max-run-time", args.max_run_time), ("--threads", args.threads)):
        if value is not None and not value > 0:  # also refuses nan
            raise UsageError(f"{flag} must be a positive number, got {value}")
    link = getattr(args, "link_bandwidth", None)
    if link is not None and not (math.isfinite(link) and link > 0):
        raise UsageError(f"--link-bandwidth must be a positive number of GB/s per direction, got {link}")
    if getattr(args, "seed", 0) < 0:
        raise UsageError(f"--seed must be an integer >= 0 (NumPy's random generator takes no negative seed), got "
                         f"{args.seed}")


# ---------------------------------------------------------------------------------------------- show
def read_measurements(paths: list[str]) -> ResultSet:
    """Results files holding at least one measurement, their warnings printed; none at all is bad input (exit 2)."""
    results = read_many(paths)
    if not results.measurements:  # the one message: the readers' warnings would only precede it
        raise ResultsError(f"{', '.join(map(str, paths))}: no measurements (an empty results file, or a run that "
                           "stopped before its first measurement finished)")
    for warning in results.warnings:
        err_console.print(f"warning: {warning}", highlight=False, markup=False, soft_wrap=True)
    return results


def cmd_show(args: argparse.Namespace) -> int:
    """A terminal summary of results files: time per call with its CI, throughput, flags; filters, CSV or JSON."""
    import csv

    from suite.results import STATUSES

    results = read_measurements(args.results)
    statuses = _choices(args.status, STATUSES, "status") if args.status else None
    present = dict.fromkeys(m.backend for m in results.measurements)
    chosen = _choices(",".join(backends.ALIASES.get(b, b) for b in _csv(args.backend)), present, "backend",
                      ()) if args.backend else None
    rows = show.rows(results.measurements, chosen, args.case, statuses, args.sort)
    if args.format == "json":
        print(json.dumps(rows, indent=1))
        return 0
    if args.format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=list(show.row(results.measurements[0])), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return 0
    table = Table(title=f"{len(rows)} of {len(results.measurements)} measurements")
    settings = show.varying_settings(rows)
    for col in ("case", "backend", "pass", "dtype", "mode", "layout", *settings, "status", "median", "95% CI",
                "rate", "check", "flags / reason"):
        table.add_column(col, justify="right" if col in ("median", "95% CI", "rate") else "left")
    for r in rows:
        low, high = r["ci_low_s"], r["ci_high_s"]
        table.add_row(r["case"], r["backend"], r["pass"], r["dtype"], r["mode"], r["layout"],
                      *(str(r[col]) for col in settings), r["status"],
                      format_seconds(r["median_s"]) if r["median_s"] else "",
                      f"{format_seconds(low)} – {format_seconds(high)}" if low is not None and high is not None
                      else "", show.rate_text(r["gflops"], r["busbw_gbps"]).strip(), r["check"],
                      r["reason"] or r["flags"])
    print_table(table)
    return 0


# ---------------------------------------------------------------------------------------------- check
def cmd_check(args: argparse.Namespace) -> int:
    """Every case through every selected backend on the same seeded inputs, against a float64 reference."""
    from suite.checking import run_check

    _parse_limits(args)
    tasks = build_plan(args)
    if not tasks:
        raise UsageError("the selection gives nothing to check")
    with _progress("checking", len(tasks), each=False) as report:
        result = run_check(tasks, args.seed, args.case_timeout, args.output, report)
    table = Table(title="relative Frobenius error against float64 NumPy (same seeded inputs; layout named "
                        "where a backend ran several)")
    for col in ("case", "pass", "dtype", *result.backends):
        table.add_column(col)
    for row in result.rows:
        table.add_row(*row, *(" · ".join(
            (f"{layout}: " if layout else "") + (f"[red]{cell.text}[/red]" if cell.failed else cell.text)
            for layout, cell in result.cell(row, b)) for b in result.backends))
    console.print(table)
    for note in result.notes:
        err_console.print(note, markup=False, highlight=False)
    console.print(result.summary())
    return result.exit_status


# ---------------------------------------------------------------------------------------------- report
def cmd_report(args: argparse.Namespace) -> int:
    """Build the static HTML report (figures, tables, normalized data) from results files or folders."""
    from suite.compare import choose_baseline

    try:  # first: without the report's packages there is nothing to read the results for (one message, no warnings)
        from reports.site import build_site
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] in ("suite", "reports", "backends"):
            raise
        raise UsageError(f"the report needs {exc.name}, which is not installed in this environment: install the "
                         "report extra (pip install 'opbench[report]') or run it through tox (tox -e report)") from None
    results = read_measurements(args.results)
    baseline = choose_baseline(backends.ALIASES.get(args.baseline, args.baseline) if args.baseline else None,
                               list(dict.fromkeys(m.backend for m in results.measurements)), list(backends.REGISTRY))
    out = Path(args.output)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{out}: cannot write the report here: {exc.strerror or exc} (-o takes a folder)") from None
    with err_console.status(f"building the report from {len(results.measurements)} measurements"):
        index = build_site(results, out, baseline=baseline, order=backends.REGISTRY)  # read once, above
    console.print(f"report written: {index} (open it in a browser, or publish the folder {index.parent})")
    return 0


def cmd_peak(args: argparse.Namespace) -> int:
    """Measure achievable GEMM throughput per dtype (large square GEMMs, forward) for the report's % of peak."""
    args.bandwidth = True  # and the memory roof, into the header
    if args.output is None:
        args.output = f"results/peak-{args.device}.jsonl"
    return cmd_run(args)


# ---------------------------------------------------------------------------------------------- merge
def cmd_merge(args: argparse.Namespace) -> int:
    """Combine results files (e.g. shards of one run) into one, refusing mixed versions or flags; of measurements
    of one key, the latest (or the re-measurement of a failure) is kept, whatever the order of the files."""
    from suite.results import merge_files

    written, runs, left_out, warnings = merge_files(args.results, args.output, args.allow_mixed)
    for warning in warnings:
        err_console.print(f"warning: {warning}", highlight=False, markup=False, soft_wrap=True)
    console.print(f"{args.output}: {written} measurements from {runs} runs"
                  + (f"; left out {left_out} records superseded by a later measurement of their key" if left_out
                     else ""), highlight=False, markup=False)
    return 0


# ---------------------------------------------------------------------------------------------- compare
def cmd_compare(args: argparse.Namespace) -> int:
    """Compare NEW with BASE (files or folders): per measurement time(new)/time(base) with a CI, and a verdict."""
    from suite import compare

    if not 0 <= args.threshold < 100:
        raise UsageError(f"--threshold takes a percentage between 0 and 100, got {args.threshold}")
    if args.fail_on_regression is not None and not args.fail_on_regression >= 0:
        raise UsageError(f"--fail-on-regression takes a percentage >= 0, got {args.fail_on_regression}")
    result = compare.compare_files(args.base, args.new, args.threshold / 100, _csv(args.across or ""))
    for warning in result.warnings:
        err_console.print(f"warning: {warning}", highlight=False, markup=False, soft_wrap=True)
    if args.format == "table":
        _print_comparison(result)
    else:
        sys.stdout.write({"json": compare.to_json, "csv": compare.to_csv,
                          "markdown": compare.to_markdown}[args.format](result))
    if args.fail_on_regression is None:
        return 0
    failures = result.gate(args.fail_on_regression / 100)
    for failure in failures:
        err_console.print(f"regression: {failure}", highlight=False, markup=False, soft_wrap=True)
    return 1 if failures else 0


ONLY_SHOWN = 20  # measurements of one side listed in the terminal, one a line; JSON has them all


def _print_comparison(result) -> None:
    from suite import compare

    if result.environment:
        table = Table(title="what differs between the recorded environments")
        for col in ("what", "base", "new"):
            table.add_column(col, overflow="fold")
        for row in result.environment:
            table.add_row(*row, style=None)
        print_table(table)
    else:
        console.print("The recorded environments do not differ.")
    table = Table(title=f"time new/base per measurement: {compare.threshold_text(result.threshold)}",
                  caption=compare.FLAGS_TEXT)
    for col in compare.pair_columns(result):
        table.add_column(col, justify="right" if col in ("base", "new", "new/base", "95% CI") else "left")
    colors = {"slower": "red", "faster": "green", "not compared": "yellow"}
    for pair in compare.sorted_pairs(result.pairs):
        table.add_row(*compare.pair_cells(pair, bool(result.across)),
                      style="dim" if pair.unreliable else colors.get(pair.verdict))
    print_table(table)
    table = Table(title="geometric mean of new/base per backend, op and pass")
    for col in compare.GEOMEAN_COLUMNS:
        table.add_column(col)
    for g in result.geomeans():
        table.add_row(*(f"{v:.3f}" if isinstance(v, float) else str(v) for v in g.values()))
    print_table(table)
    for side, measurements in (("base", result.only_base), ("new", result.only_new)):
        labels = sorted({f"{m.case} ({m.backend} {m.key.pass_} {m.key.variant})" for m in measurements})
        if labels:
            more = len(labels) - ONLY_SHOWN
            console.print("\n  ".join([f"only in {side} ({len(measurements)}):", *labels[:ONLY_SHOWN]])
                          + (f"\n  … and {more} more (--format json lists every one, under only_{side})"
                             if more > 0 else ""), highlight=False, markup=False, soft_wrap=True)
    console.print(result.summary(), highlight=False)


# ---------------------------------------------------------------------------------------------- selfcheck
def cmd_selfcheck(args: argparse.Namespace) -> int:
    """Time a few ops with opbench and with torch.utils.benchmark (and CUDA events on a GPU) in one process, and
    measure machine noise."""
    from backends.base import DeviceMissing
    from suite.selfcheck import selfcheck

    if not args.threads > 0:
        raise UsageError(f"--threads must be a positive number, got {args.threads}")
    if args.clock == "cpu" and (args.threads != 1 or args.device != "cpu"):
        raise UsageError("--clock cpu counts the calling thread's CPU time, which is the op's time only on the CPU "
                         "with --threads 1")
    try:
        return selfcheck(console, err_console, threads=args.threads, device=args.device, clock=args.clock)
    except DeviceMissing as exc:  # a CPU-only torch asked for the GPU
        raise UsageError(str(exc)) from None


# ---------------------------------------------------------------------------------------------- main
COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], Callable[[argparse.ArgumentParser], None]]] = {
    "list": (cmd_list, lambda p: (add_selection(p), p.add_argument("--subsets", action="store_true",
                                                                      help="list subsets with totals"),
                                  p.add_argument("--backends", action="store_true",
                                                 help="list the backends: package, installed, modes, layouts"),
                                  p.add_argument("--format", choices=("table", "json"), default="table",
                                                 help="a table (default) or JSON, for scripts"))),
    "run": (cmd_run, add_run_options),
    "show": (cmd_show, lambda p: (
        p.add_argument("results", nargs="+", help="results files or folders"),
        p.add_argument("--backend", help="keep these backends (comma list)"),
        p.add_argument("--case", action="append", default=[], help="case id or glob pattern (repeatable)"),
        p.add_argument("--status", help="keep these statuses (comma list, e.g. error,timeout)"),
        p.add_argument("--sort", choices=tuple(show.SORTS), default="file",
                       help="row order (median: slowest first; gflops: fastest first; default: as in the files)"),
        p.add_argument("--format", choices=("table", "csv", "json"), default="table",
                       help="a table (default), or CSV or JSON rows for scripts and spreadsheets"))),
    "check": (cmd_check, lambda p: add_run_options(p, "check")),
    "report": (cmd_report, lambda p: (
        p.add_argument("results", nargs="+", help="results files or folders (searched for *.jsonl)"),
        p.add_argument("-o", "--output", default="build/report", help="report folder (default %(default)s)"),
        p.add_argument("--baseline", default=None,
                       help="backend the speedups are relative to (default: the first of the results in "
                            f"{', '.join(backends.REGISTRY)} order)"))),
    "peak": (cmd_peak, lambda p: add_run_options(p, "peak")),
    "merge": (cmd_merge, lambda p: (
        p.add_argument("results", nargs="+", help="results files or folders"),
        p.add_argument("-o", "--output", required=True, help="merged results file"),
        p.add_argument("--allow-mixed", action="store_true", help="merge even if versions or flags differ"))),
    "compare": (cmd_compare, lambda p: (
        p.add_argument("base", help="results file or folder: the baseline"),
        p.add_argument("new", help="results file or folder: compared with the baseline"),
        p.add_argument("--threshold", type=float, default=SAME_BAND * 100, metavar="PCT",
                       help="slower/faster only when the 95%% CI of time new/base lies wholly beyond 1 ± PCT%% "
                            "(default %(default)g: the report's same-speed band)"),
        p.add_argument("--across", default=None, metavar="NAME[,NAME]",
                       help="pair measurements that differ in these settings of their identity, on the rest of it "
                            "(e.g. --across math: strict vs tf32; threads; options; layout; mode; backend)"),
        p.add_argument("--fail-on-regression", type=float, default=None, metavar="PCT",
                       help="exit 1 when a measurement is significantly slower by more than PCT%% (its whole CI "
                            "above 1 + PCT%%) or was fine in base and fails in new; a pair flagged "
                            f"{', '.join(UNRELIABLE_FLAGS)} on either side is shown but never counted"),
        p.add_argument("--format", choices=("table", "markdown", "csv", "json"), default="table",
                       help="tables (default), Markdown for a PR comment, CSV (the pairs) or JSON (everything)"))),
    "selfcheck": (cmd_selfcheck, lambda p: (
        p.add_argument("--threads", type=int, default=usable_cpus(),
                       help="CPU threads for torch (default: all usable CPUs, %(default)s here; --clock cpu takes 1)"),
        p.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                       help="gpu: also time opbench's blocks with CUDA events (default %(default)s)"),
        p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                       help="cpu: time by the thread's CPU time, leaving out waits for a CPU on a busy machine "
                            "(with --threads 1; default %(default)s)"))),
}


EXIT_STATUS = """exit status:
  0    everything requested was measured, or recorded as unsupported/skipped with a reason
  1    a measurement errored, crashed, timed out, ran out of memory or failed the numerical check
       (the run still finishes and keeps every record; --retry-failed measures them again)
  2    usage error or bad input; nothing was run
  130  interrupted (Ctrl-C or SIGTERM); what finished is kept, and --resume continues a run
  141  the reader of the output went away (e.g. `show --format csv | head -2`), as for any program stopped by SIGPIPE"""


class Parser(argparse.ArgumentParser):
    """argparse that reports a mistake as one ``error:`` line (with "did you mean") and exits 2."""

    commands: dict[str, Parser]

    def error(self, message: str) -> NoReturn:
        choice = re.search(r"invalid choice: '(.*?)' \(choose from (.*)\)", message)
        if choice:
            message += did_you_mean(choice[1], re.findall(r"'(.*?)'", choice[2]))
        err_console.print(f"error: {message} (see {self.prog} --help)", highlight=False, markup=False,
                          soft_wrap=True)
        self.exit(2)


def parser() -> Parser:
    top = Parser(prog="python -m suite",
                 description="opbench: GEMMs, convolutions, attention and recurrent layers in PyTorch, TensorFlow "
                             "and JAX",
                 epilog=EXIT_STATUS, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    sub = top.add_subparsers(dest="command", required=True, metavar="command")
    top.commands = {}
    for name, (func, configure) in COMMANDS.items():
        summary = (func.__doc__ or "").replace("%", "%%")  # argparse %-formats help texts
        command = sub.add_parser(name, help=summary, description=func.__doc__, epilog=EXIT_STATUS,
                                 formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
        configure(command)
        command.set_defaults(func=func)
        top.commands[name] = command
    return top


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """The parsed command line; an unknown flag is named with the closest flag of its subcommand."""
    top = parser()
    args, extra = top.parse_known_args(argv)
    if extra:
        flags = {name: [flag for action in command._actions for flag in action.option_strings]
                 for name, command in top.commands.items()}
        word = extra[0].split("=")[0]
        others = [name for name, names in flags.items() if word in names]
        hint = (f" ({word} is an option of {', '.join(others)}, not of {args.command})" if others
                else did_you_mean(word, flags[args.command]) if word.startswith("-") else "")
        top.commands[args.command].error(f"unrecognized argument{'s' if len(extra) > 1 else ''}: "
                                         f"{' '.join(extra)}{hint}")
    return args


BROKEN_PIPE = 128 + signal.SIGPIPE  # the status a shell gives a program stopped by SIGPIPE (`yes | head`)


def _stop_writing() -> None:
    """Point stdout and stderr at /dev/null, so that Python's flush at exit meets no closed pipe (Python's recipe:
    https://docs.python.org/3/library/signal.html#note-on-sigpipe)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, OSError, ValueError):  # a stream without a descriptor (tests)
            os.dup2(devnull, stream.fileno())
    os.close(devnull)


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM (kill, a Slurm job cancelled or past its time) stops a run as Ctrl-C does: workers killed, every
    finished measurement kept."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parse(argv)
    except SystemExit as exc:  # --help (0), or a mistake argparse found and printed (2)
        return exc.code if isinstance(exc.code, int) else 2
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if in_main_thread else None
    try:
        return _dispatch(args)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _dispatch(args: argparse.Namespace) -> int:
    try:
        code = args.func(args)
        sys.stdout.flush()  # a reader that went away shows here, not when Python flushes at exit
        return code
    except BrokenPipeError:  # `show --format csv | head -2`: the reader has what it wanted; stop quietly
        _stop_writing()
        return BROKEN_PIPE
    except (UsageError, CatalogError, ResultsError, CompareError, backends.BackendUnavailable, FileExistsError) as exc:
        err_console.print(f"error: {exc}", highlight=False, markup=False, soft_wrap=True)
        return 2
    except OSError as exc:  # a file or folder the system refused (permissions, a full disk, a name too long)
        where = f"{exc.filename}: " if exc.filename else ""
        err_console.print(f"error: {where}{exc.strerror or exc}", highlight=False, markup=False, soft_wrap=True)
        return 2
    except ModuleNotFoundError as exc:  # a command's own import: selfcheck's torch, say
        message = missing_module(exc)
        if message is None:
            raise
        err_console.print(f"error: {message}", highlight=False, markup=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:  # before or after a run (cmd_run handles one in progress): nothing to lose
        err_console.print("interrupted")
        return 130
