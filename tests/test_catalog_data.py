"""The catalog's data: every shapes/*.yaml file validates, DeepBench matches its CSVs, the networks match their
published definitions (layer counts, FLOPs, parameter counts), and the named subsets are sane. No framework imports.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml

from suite.catalog import SHAPES_DIR, SUBSETS_FILE, Case, load_catalog, load_file

# DeepBench's shape lists as CSV (see that folder's README.md); the CSV comparisons skip where it is absent
DATA_DIR = Path(os.environ.get("OPBENCH_DEEPBENCH_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
needs_csv = pytest.mark.skipif(not (DATA_DIR / "deepbench_conv.csv").exists(),
                               reason=f"DeepBench CSVs not found in {DATA_DIR} (set OPBENCH_DEEPBENCH_DATA)")
DEEPBENCH_SETS = {
    "training_set": "deepbench-train",
    "inference_server_set": "deepbench-inference-server",
    "inference_device_set": "deepbench-inference-device",
}
NETWORK_TAGS = ("resnet50", "mobilenetv2", "vit-b16", "bert-base", "bert-large", "gpt2", "llama3-8b")
CATALOG_FILES = sorted(p for p in SHAPES_DIR.glob("*.yaml") if p.name != SUBSETS_FILE)


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


@pytest.fixture(scope="module")
def by_id(catalog):
    return catalog.by_id()


def in_file(catalog, name: str) -> list[Case]:
    return [c for c in catalog.cases if Path(c.file).name == name]


def tagged(catalog, *tags: str) -> list[Case]:
    return [c for c in catalog.cases if set(tags) <= set(c.tags)]


# ----------------------------------------------------------------------------------------------- every file, every id
@pytest.mark.parametrize("path", CATALOG_FILES, ids=lambda p: p.name)
def test_every_catalog_file_validates_and_is_not_empty(path):
    cases = load_file(path)
    assert cases, f"{path.name} has no cases"
    description = yaml.safe_load(path.read_text(encoding="utf-8")).get("description")
    assert isinstance(description, str) and len(description) > 40, f"{path.name} needs a description"


def test_expected_catalog_files_exist():
    names = {p.name for p in CATALOG_FILES}
    assert {"deepbench.yaml", "resnet50.yaml", "mobilenetv2.yaml", "vit.yaml", "bert.yaml", "gpt.yaml", "seed.yaml",
            "sweeps.yaml", "smoke.yaml"} <= names


def test_load_catalog_has_every_file(catalog):
    assert len(catalog.cases) == sum(len(load_file(p)) for p in CATALOG_FILES)


def test_ids_unique_across_files_and_well_formed():
    ids = [entry["id"] for p in CATALOG_FILES for entry in yaml.safe_load(p.read_text(encoding="utf-8"))["cases"]]
    dupes = [i for i, n in Counter(ids).items() if n > 1]
    assert not dupes
    bad = [i for i in ids if not re.fullmatch(r"[a-z0-9][a-z0-9.\-]*", i)]
    assert not bad, f"ids should be lower-case, digits, '-' and '.': {bad[:5]}"


def test_every_entry_has_provenance(catalog):
    for case in catalog.cases:
        prov = case.provenance
        for field in ("network", "layer", "source"):
            assert getattr(prov, field).strip(), f"{case.id}: empty provenance.{field}"
        if Path(case.file).name != "smoke.yaml":
            assert len(prov.derivation) > 15, f"{case.id}: derivation missing or too short"


# ----------------------------------------------------------------------------------------------------------- DeepBench
def _read_csv(name: str) -> list[dict]:
    with open(DATA_DIR / name, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _gemm_key(case: Case) -> tuple[int, ...]:
    op = case.op
    return (op.m, op.n, op.k, int(op.transpose_a), int(op.transpose_b))


def _conv_key(case: Case) -> tuple[int, ...]:
    """DeepBench's column order: W, H, C, N, K, S (filter width), R (filter height), pad_w, pad_h, wstride,
    hstride."""
    op = case.op
    top, bottom, left, right = op.padding
    assert top == bottom and left == right, f"{case.id}: DeepBench pads symmetrically"
    assert op.dilation == (1, 1) and op.groups == 1
    return (op.w, op.h, op.c, op.n, op.k, op.s, op.r, left, top, op.stride[1], op.stride[0])


GEMM_COLS = ("M", "N", "K", "a_t", "b_t")
CONV_COLS = ("W", "H", "C", "N", "K", "S_filter_w", "R_filter_h", "pad_w", "pad_h", "wstride", "hstride")


def _csv_sets(rows: list[dict], cols: tuple[str, ...]) -> dict[tuple[int, ...], set[str]]:
    out: dict[tuple[int, ...], set[str]] = {}
    for row in rows:
        if row["set"] in DEEPBENCH_SETS:
            out.setdefault(tuple(int(row[c]) for c in cols), set()).add(DEEPBENCH_SETS[row["set"]])
    return out


@pytest.fixture(scope="module")
def deepbench(catalog):
    cases = in_file(catalog, "deepbench.yaml")
    assert all("deepbench" in c.tags for c in cases)
    return [c for c in cases if c.op.kind == "gemm"], [c for c in cases if c.op.kind == "conv2d"]


def test_deepbench_counts(deepbench):
    gemms, convs = deepbench
    assert len(gemms) == 243
    assert len(convs) == 191


@needs_csv
@pytest.mark.parametrize("kind", ["gemm", "conv"])
def test_deepbench_matches_csv_exactly(deepbench, kind):
    gemms, convs = deepbench
    if kind == "gemm":
        expected = _csv_sets(_read_csv("deepbench_gemm.csv"), GEMM_COLS)
        got = {_gemm_key(c): c for c in gemms}
    else:
        expected = _csv_sets(_read_csv("deepbench_conv.csv"), CONV_COLS)
        got = {_conv_key(c): c for c in convs}
    assert len(got) == len(expected), "two entries have the same dims"
    assert set(got) == set(expected)
    for key, sets in expected.items():
        case_sets = {t for t in got[key].tags if t in DEEPBENCH_SETS.values()}
        assert case_sets == sets, f"{got[key].id}: tags {case_sets}, CSV sets {sets}"
        assert got[key].provenance.source.startswith("DeepBench")


SPARSE_SETS = {"inference_server_set": "deepbench-inference-server",
               "inference_device_set": "deepbench-inference-device"}


@needs_csv
def test_deepbench_sparse_matches_csv_exactly(catalog):
    """Every row of deepbench_sparse_gemm.csv is one spmm entry (distinct shapes once), tagged with its sets and
    naming its CSV lines; nothing else in the file is tagged deepbench."""
    rows = _read_csv("deepbench_sparse_gemm.csv")
    assert len(rows) == 32
    expected: dict[tuple, set[str]] = {}
    lines: dict[tuple, set[int]] = {}
    for line, row in enumerate(rows, start=2):
        assert row["a_t"] == row["b_t"] == "false"
        key = (int(row["M"]), int(row["N"]), int(row["K"]), float(row["sparsity"]))
        expected.setdefault(key, set()).add(SPARSE_SETS[row["set"]])
        lines.setdefault(key, set()).add(line)
    cases = [c for c in in_file(catalog, "deepbench_sparse.yaml") if "deepbench" in c.tags]
    got = {(c.op.m, c.op.n, c.op.k, c.op.sparsity): c for c in cases}
    assert len(got) == len(cases) == len(expected) == 24
    assert all(c.op.kind == "spmm" for c in cases)
    for key, sets in expected.items():
        case = got[key]
        assert {t for t in case.tags if t in SPARSE_SETS.values()} == sets, case.id
        assert {int(n) for n in re.findall(r"line (\d+)", case.provenance.derivation)} == lines[key], case.id


def test_sparse_subset(catalog):
    """34 spmm cases (24 DeepBench shapes and 10 sweep points), every sparse shape with its dense GEMM, the sweeps at
    six sparsities."""
    sparse = catalog.subset("sparse")
    spmm = [c for c in sparse if c.op.kind == "spmm"]
    assert len(spmm) == 34
    dense = {c.op for c in sparse if c.op.kind == "gemm"}
    assert {c.op.dense() for c in spmm} == dense
    sweeps: dict[tuple, list[float]] = {}
    for c in spmm:
        if "sparsity-sweep" in c.tags:
            sweeps.setdefault((c.op.m, c.op.n, c.op.k), []).append(c.op.sparsity)
    assert {shape: sorted(s) for shape, s in sweeps.items()} == {
        shape: [0.5, 0.7, 0.8, 0.9, 0.95, 0.99] for shape in ((7680, 1500, 2560), (1920, 1, 640))}
    int8 = catalog.subset("int8")
    assert {c.op.kind for c in int8} == {"gemm", "conv2d"}
    assert all({"deepbench-inference-server", "deepbench-inference-device"} & set(c.tags) for c in int8)


def test_quick_inference_cases(catalog):
    """The main job's inference cases: one DeepBench sparse GEMM and its dense GEMM, which also runs in int8
    (forward only); the sweep at DeepBench's 7680×1×2560 scaled by 1/4 in M and K, with its dense GEMM."""
    quick = catalog.subset("quick")
    spmm = [c for c in quick if c.op.kind == "spmm"]
    [deepbench] = [c for c in spmm if "deepbench" in c.tags]
    assert (deepbench.op.m, deepbench.op.n, deepbench.op.k) == (7680, 1, 2560)
    sweep = [c.op for c in spmm if "sparsity-sweep" in c.tags]
    assert {(op.m, op.n, op.k) for op in sweep} == {(7680 // 4, 1, 2560 // 4)}
    assert sorted(op.sparsity for op in sweep) == [0.5, 0.7, 0.8, 0.9, 0.95, 0.99]
    assert {c.op for c in quick if c.op.kind == "gemm"} >= {op.dense() for op in (deepbench.op, *sweep)}
    int8 = [c for c in quick if "int8" in c.dtypes]
    assert [c.op for c in int8] == [deepbench.op.dense()]


def test_deepbench_non_square_filter_not_swapped(by_id):
    # deepbench_conv.csv line 2: W=700 H=161 C=1 N=4 K=32 S_filter_w=20 R_filter_h=5, no pad, stride 2×2
    op = by_id["db-conv-161x700-c1-k32-n4-f5x20-s2-p0"].op
    assert (op.h, op.w, op.r, op.s) == (161, 700, 5, 20)
    assert (op.p, op.q) == ((161 - 5) // 2 + 1, (700 - 20) // 2 + 1) == (79, 341)
    assert op.flops() == 2 * 4 * 32 * 79 * 341 * 1 * 5 * 20


@needs_csv
def test_deepbench_skips_commented_out_row(deepbench):
    _, convs = deepbench
    commented = [r for r in _read_csv("deepbench_conv.csv") if r["set"] not in DEEPBENCH_SETS]
    assert len(commented) == 1
    assert tuple(int(commented[0][c]) for c in CONV_COLS) not in {_conv_key(c) for c in convs}


def test_deepbench_transposed_gemm(by_id):
    op = by_id["db-gemm-2560x64x2560-tn"].op
    assert op.transpose_a and not op.transpose_b
    assert op.a_shape == (2560, 2560) and op.out_shape == (2560, 64)


# ----------------------------------------------------------------------------------------------------------- networks
def network(catalog, tag: str, variant: str) -> list[Case]:
    cases = tagged(catalog, tag, variant)
    assert cases, f"no {tag} {variant} cases"
    return cases


def configurations(catalog) -> dict[str, list[Case]]:
    """Network configurations by their ``net:`` tag (network × phase × batch), each with its distinct layers."""
    configs: dict[str, list[Case]] = {}
    for case in catalog.cases:
        for tag in case.tags:
            if tag.startswith("net:"):
                configs.setdefault(tag, []).append(case)
    return configs


def total_flops(cases: list[Case]) -> int:
    return sum(c.count * c.op.flops() for c in cases)


def test_known_layer_flops(by_id):
    assert by_id["resnet50-infer-stem-7x7s2-3x64-224"].op.flops() == 2 * 64 * 112 * 112 * 3 * 7 * 7 == 236_027_904
    assert by_id["bert-base-train-ffn-up"].op.flops() == 2 * (8 * 512) * 3072 * 768 == 19_327_352_832
    assert by_id["vit-b16-infer-patch-embed"].op.flops() == 2 * 768 * 14 * 14 * 3 * 16 * 16 == 231_211_008
    assert by_id["llama3-8b-decode-gate-up-proj"].op.flops() == 2 * 1 * 14336 * 4096
    assert by_id["mobilenetv2-infer-dw3x3-144-56"].op.flops() == 2 * 144 * 56 * 56 * 1 * 3 * 3 == 8_128_512
    assert by_id["seed-conv-3x3"].op.flops() == 2 * 64 * 32 * 32 * 3 * 3 * 3 == 3_538_944


@pytest.mark.parametrize("config", ["net:resnet50-train-b32", "net:resnet50-train-b8", "net:resnet50-infer-b1"])
def test_resnet50_layer_list(catalog, config):
    cases = configurations(catalog)[config]
    convs = [c for c in cases if c.op.kind == "conv2d"]
    assert sum(c.count for c in convs) == 53  # 1 stem + 16 blocks × 3 + 4 downsample projections
    assert len(convs) == len({c.op for c in convs}) == 23  # each distinct shape once
    assert sum(c.count for c in convs if c.op.r == 3) == 16  # one 3×3 per bottleneck block
    strided = sorted((c.op.r, c.op.c, c.count) for c in convs if c.op.stride == (2, 2))
    # v1.5: stride 2 on the stem, on the 3×3 conv of the first block of stages 2-4, and on their projections
    assert strided == [(1, 256, 1), (1, 512, 1), (1, 1024, 1), (3, 128, 1), (3, 256, 1), (3, 512, 1), (7, 3, 1)]
    assert all(c.op.p * c.op.stride[0] == c.op.h for c in convs if c.op.r != 7)  # "same" convs / exact halving
    assert {c.op.q for c in convs} == {112, 56, 28, 14, 7}
    (fc,) = [c for c in cases if c.op.kind == "gemm"]
    assert (fc.op.n, fc.op.k) == (1000, 2048)
    batch = convs[0].op.n
    assert {c.op.n for c in convs} == {fc.op.m} == {int(config.rsplit("-b", 1)[1])}
    # torchvision reports 4.09 GMACs per 224×224 image for resnet50 (conv + fc)
    assert total_flops(cases) / batch == pytest.approx(2 * 4.09e9, rel=0.01)


@pytest.mark.parametrize("variant", ["train", "inference"])
def test_mobilenetv2_layer_list(catalog, variant):
    cases = network(catalog, "mobilenetv2", variant)
    convs = [c for c in cases if c.op.kind == "conv2d"]
    depthwise = [c for c in convs if c.op.groups > 1]
    assert all(c.op.depthwise and c.op.k == c.op.c and (c.op.r, c.op.s) == (3, 3) for c in depthwise)
    assert all("depthwise" in c.tags for c in depthwise)
    assert sum(c.count for c in depthwise) == 17
    pointwise = [c for c in convs if c.op.r == 1]
    assert sum(c.count for c in pointwise) == 16 + 17 + 1  # expand (not in the t=1 block), project, final 1×1
    assert sum(c.count for c in convs) == 52
    expand = [c for c in pointwise if c.op.k == 6 * c.op.c]
    assert sum(c.count for c in expand) == 16
    assert sorted(c.op.c for c in depthwise if c.op.stride == (2, 2)) == [96, 144, 192, 576]
    (classifier,) = [c for c in cases if c.op.kind == "gemm"]
    assert (classifier.op.n, classifier.op.k) == (1000, 1280)
    batch = convs[0].op.n
    # torchvision reports 0.30 GMACs per image for mobilenet_v2 (300.8 M multiply-adds)
    assert total_flops(cases) / batch == pytest.approx(2 * 0.3008e9, rel=0.02)


@pytest.mark.parametrize("variant, batch", [("train", 32), ("inference", 1)])
def test_vit_b16_layer_list(catalog, variant, batch):
    cases = network(catalog, "vit-b16", variant)
    gemms = [c for c in cases if c.op.kind == "gemm" and c.count == 12]
    assert sorted((c.op.n, c.op.k) for c in gemms) == [(768, 768), (768, 3072), (2304, 768), (3072, 768)]
    assert all(c.op.m == batch * 197 for c in gemms)
    (patch,) = [c for c in cases if c.op.kind == "conv2d"]
    assert patch.op.stride == (16, 16) and patch.op.p * patch.op.q + 1 == 197
    # torchvision reports 17.56 GMACs for vit_b_16, the attention products Q·Kᵀ and softmax·V included
    # (2 × 197² × 768 MACs per layer): the layer list holds them as one attention op per layer
    (attention,) = [c for c in cases if c.op.kind == "attention"]
    assert attention.count * attention.op.flops() / batch / 2 == 12 * 2 * 197 * 197 * 768
    assert total_flops(cases) / batch / 2 == pytest.approx(17.56e9, rel=0.005)


@pytest.mark.parametrize("tag, hidden, layers", [("bert-base", 768, 12), ("bert-large", 1024, 24)])
def test_bert_layer_list(catalog, tag, hidden, layers):
    configs = configurations(catalog)
    runs = [("train-b8s512", 8 * 512), ("infer-b1s128", 128)] + [("train-b8s128", 8 * 128)] * (tag == "bert-base")
    for config, tokens in runs:
        cases = [c for c in configs[f"net:{tag}-{config}"] if c.op.kind == "gemm"]  # the attention: test_new_ops
        assert all(c.op.m == tokens and c.count == layers for c in cases)
        assert sorted((c.op.n, c.op.k) for c in cases) == sorted(
            [(3 * hidden, hidden), (hidden, hidden), (4 * hidden, hidden), (hidden, 4 * hidden)])
        assert sum(c.op.n * c.op.k for c in cases) == 12 * hidden * hidden  # encoder weights per layer


def test_gpt2_parameter_count(catalog):
    cases = [c for c in network(catalog, "gpt2", "decode") if c.op.kind == "gemm"]  # the attention: test_new_ops
    assert all(c.op.m == 1 for c in cases)
    weights = sum(c.count * c.op.n * c.op.k for c in cases)  # includes lm_head = the tied token embedding
    per_layer_bias_and_norm = (2304 + 768 + 3072 + 768) + 4 * 768
    positions, final_norm = 1024 * 768, 2 * 768
    assert weights + 12 * per_layer_bias_and_norm + positions + final_norm == 124_439_808  # GPT-2 small


def test_llama3_8b_parameter_count(catalog):
    cases = [c for c in network(catalog, "llama3-8b", "decode") if c.op.kind == "gemm"]  # attention: test_new_ops
    assert sorted((c.op.n, c.op.k, c.count) for c in cases) == [
        (1024, 4096, 64), (4096, 4096, 64), (4096, 14336, 32), (14336, 4096, 64), (128256, 4096, 1)]
    linear = sum(c.count * c.op.n * c.op.k for c in cases)
    embedding, norms = 128256 * 4096, (2 * 32 + 1) * 4096
    assert linear + embedding + norms == 8_030_261_248  # Meta-Llama-3-8B's parameter count


@pytest.mark.parametrize("tag", ["gpt2", "llama3-8b"])
def test_llm_phases(catalog, tag):
    train, prefill, decode = ([c for c in network(catalog, tag, phase) if c.op.kind == "gemm"]  # attention: elsewhere
                              for phase in ("train", "prefill", "decode"))
    assert {c.op.m for c in train} == {8192} and {c.op.m for c in prefill} == {512} and {c.op.m for c in decode} == {1}
    assert all("inference" in c.tags for c in prefill + decode)
    shapes = {(c.op.n, c.op.k) for c in decode}
    assert {(c.op.n, c.op.k) for c in train} == shapes
    assert {(c.op.n, c.op.k) for c in prefill} < shapes  # lm_head: only the last token at prefill = decode shape


def test_modern_entries_are_tagged(catalog):
    modern = tagged(catalog, "modern")
    assert modern
    for case in modern:
        assert len([t for t in NETWORK_TAGS if t in case.tags]) == 1, case.id
        assert ("train" in case.tags) != ("inference" in case.tags), case.id
        assert case.provenance.source and case.provenance.derivation
    for tag in NETWORK_TAGS:
        assert tagged(catalog, tag, "train") and tagged(catalog, tag, "inference"), tag


REDUCED = {"resnet50-train-b8-": ("resnet50-train-", 8, 32),  # reduced prefix: (full prefix, rows, full rows)
           "bert-base-train-b8s128-": ("bert-base-train-", 1024, 4096)}


@pytest.mark.parametrize("prefix", ["resnet50", "mobilenetv2", "vit-b16", "bert-base", "bert-large"])
def test_every_training_layer_has_an_inference_twin(by_id, prefix):
    train = [i for i in by_id if i.startswith(f"{prefix}-train-") and not i.startswith(tuple(REDUCED))]
    assert train
    for i in train:
        twin = by_id.get(i.replace("-train-", "-infer-"))
        assert twin is not None, i
        a, b = by_id[i], twin
        assert a.count == b.count and a.provenance.layer == b.provenance.layer


@pytest.mark.parametrize("reduced", REDUCED)
def test_reduced_batch_copies_match_their_full_batch_entry(by_id, reduced):
    """The main job's smaller batches: the same layers, counts and provenance, only the batch (rows) scaled."""
    full_prefix, rows, full_rows = REDUCED[reduced]
    # the attention products (bgemm) are checked against their attention entry in test_new_ops
    copies = [i for i in by_id if i.startswith(reduced) and by_id[i].op.kind != "bgemm"]
    assert copies
    for i in copies:
        copy, full = by_id[i], by_id[i.replace(reduced, full_prefix)]
        assert (copy.count, copy.provenance.network, copy.provenance.layer) == (
            full.count, full.provenance.network, full.provenance.layer)
        assert all(part.strip() in copy.provenance.source for part in full.provenance.source.split(";")), i
        if copy.op.kind == "attention":  # rows = batch × sequence: the sequence is what the copy shortens
            seq, full_seq = rows // copy.op.batch, full_rows // full.op.batch
            assert (full.op.q_len, full.op.kv_len) == (full_seq, full_seq), i
            assert copy.op == dataclasses.replace(full.op, q_len=seq, kv_len=seq), i
        else:
            batch_dim = "n" if copy.op.kind == "conv2d" else "m"
            assert getattr(full.op, batch_dim) == full_rows
            assert copy.op == dataclasses.replace(full.op, **{batch_dim: rows}), i
        assert "CPU main job" in copy.provenance.derivation, i
        assert {"train", "quick"} <= set(copy.tags), i


def test_every_modern_entry_belongs_to_one_network_configuration(catalog):
    configs = configurations(catalog)
    for case in tagged(catalog, "modern"):
        assert len([t for t in case.tags if t.startswith("net:")]) == 1, case.id
    assert not [c.id for c in catalog.cases if "modern" not in c.tags and any(t.startswith("net:") for t in c.tags)]
    for name, cases in configs.items():
        assert len({c.provenance.network for c in cases}) == 1, name
        phases = {p for c in cases for p in ("train", "inference") if p in c.tags}
        assert phases == {"train" if "-train-" in name else "inference"}, name
        assert len({c.op for c in cases}) == len(cases), f"{name}: a layer shape listed twice; use count"
    assert len([n for n in configs if "prefill" in n]) == len([n for n in configs if "decode" in n]) == 2


def test_first_layer_is_the_data_input_layer(catalog):
    """The layer whose input is the data, so training never computes its dX: one per image network's configuration
    (the stem or patch embedding, on 3 image channels), none for the transformers whose first GEMM takes the output of
    a trainable embedding (its dX trains the embedding)."""
    for name, cases in configurations(catalog).items():
        first = [c for c in cases if "first-layer" in c.tags]
        if name.startswith(("net:resnet50-", "net:mobilenetv2-", "net:vit-b16-")):
            assert len(first) == 1, name
            assert first[0].op.kind == "conv2d" and first[0].op.c == 3 and first[0].count == 1, name
        else:
            assert not first, name
    assert all("modern" in c.tags for c in tagged(catalog, "first-layer"))


# ------------------------------------------------------------------------------------------------------ seed, sweeps
def test_seed_examples(catalog, by_id):
    seeds = tagged(catalog, "seed")
    assert {c.id for c in seeds} == {"seed-dense-1024x512", "seed-dense-3072x512", "seed-conv-3x3", "seed-conv-7x7"}
    assert all({"quick", "smoke"} <= set(c.tags) for c in seeds)
    dense = by_id["seed-dense-1024x512"].op
    assert (dense.m, dense.n, dense.k) == (1, 512, 1024)
    conv3, conv7 = by_id["seed-conv-3x3"].op, by_id["seed-conv-7x7"].op
    assert conv3.out_shape == conv7.out_shape == (1, 64, 32, 32)
    # the dense layer over the conv's flattened input: same input size exactly
    assert by_id["seed-dense-3072x512"].op.input_elements == conv3.input_elements == 3 * 32 * 32


def test_sweeps(catalog):
    gemm = sorted(c.op.m for c in tagged(catalog, "sweep-gemm"))
    assert gemm[0] == 64 and gemm[-1] == 4096 and len(gemm) >= 10
    assert all(c.op.m == c.op.n == c.op.k for c in tagged(catalog, "sweep-gemm"))
    spatial = tagged(catalog, "sweep-conv-spatial")
    assert {c.op.h for c in spatial} >= {7, 14, 28, 56, 112}
    assert {(c.op.n, c.op.c, c.op.k) for c in spatial} == {(8, 64, 64)}
    channels = tagged(catalog, "sweep-conv-channels")
    assert {c.op.c for c in channels} >= {16, 32, 64, 128, 256, 512}
    assert {(c.op.n, c.op.h, c.op.w) for c in channels} == {(8, 28, 28)}
    assert all("sweeps" in c.tags and c.provenance.network == "synthetic scaling sweep"
               for c in spatial + channels + tagged(catalog, "sweep-gemm"))


# ------------------------------------------------------------------------------------------------------------ subsets
def test_every_subset_is_non_empty(catalog):
    assert {"smoke", "full", "quick", "seed", "deepbench-train", "deepbench-inference", "modern", "sweeps"} <= set(
        catalog.subsets)
    for name in catalog.subsets:
        assert catalog.subset(name), name


def test_subset_membership(catalog):
    assert {c.id for c in catalog.subset("deepbench-train")} == {c.id for c in tagged(catalog, "deepbench-train")}
    inference = catalog.subset("deepbench-inference")
    assert all({"deepbench-inference-server", "deepbench-inference-device"} & set(c.tags) for c in inference)
    assert len(inference) == len(tagged(catalog, "deepbench-inference-server")) + len(
        tagged(catalog, "deepbench-inference-device")) - len(
        tagged(catalog, "deepbench-inference-server", "deepbench-inference-device"))
    assert {c.id for c in catalog.subset("modern")} == {c.id for c in tagged(catalog, "modern")}
    assert {c.id for c in catalog.subset("sweeps")} == {c.id for c in tagged(catalog, "sweeps")}
    # full = every real shape: all but the scaled-down smoke file and the all-reduce messages (ranks, not a device)
    full = {c.id for c in catalog.subset("full")}
    assert full == {c.id for c in catalog.cases if Path(c.file).name not in ("smoke.yaml", "allreduce.yaml")}


# Forward FLOPs of quick's distinct cases; × 5 for the four passes (dX+dW counts twice) and × ~8 timed calls per
# measurement at ~200 GFLOP/s this is about 17 s of arithmetic per framework variant: the main job's time
# goes to the per-measurement floor (warm-up, 7+ blocks, compile, check), not to FLOPs.
QUICK_BUDGET = 85e9


def test_quick_fits_the_cpu_budget(catalog):
    quick = catalog.subset("quick")
    assert 40 <= len(quick) <= 62, len(quick)
    big = [c.id for c in quick if c.op.flops() > 5e9]
    assert big == ["sweep-gemm-2048"], big  # the one compute-bound GEMM point (and the measured peak)
    assert sum(c.op.flops("forward") for c in quick) <= QUICK_BUDGET
    # the whole models run beside quick in the main job (tox: the `model` subset, inference and training step)
    assert not [c for c in quick if c.op.kind == "model"]
    assert {c.id for c in catalog.subset("model")} == {"model-resnet50-train-b8", "model-bert-base-train-b8s128"}


@pytest.mark.parametrize("config", ["net:resnet50-train-b8", "net:bert-base-train-b8s128"])
def test_quick_holds_whole_networks(catalog, config):
    """Every distinct layer of the main job's networks, so the report can total a training step."""
    layers = configurations(catalog)[config]
    assert {c.id for c in layers} <= {c.id for c in catalog.subset("quick")}
    assert sum(c.count for c in layers) == {"net:resnet50-train-b8": 54, "net:bert-base-train-b8s128": 60}[config]


def test_the_main_job_s_other_variants_run_on_the_network_layer_sets_and_sweeps_on_two_passes(catalog):
    """tox's variant commands (quick-variants): exactly the layers of quick's two networks, whose fastest variant the
    report's comparisons and the whole step's layer sums take; a sweep point runs what the scaling fit uses."""
    variants = {c.id for c in catalog.subset("quick-variants")}
    layers = {c.id for config in ("net:resnet50-train-b8", "net:bert-base-train-b8s128")
              for c in configurations(catalog)[config]}
    assert variants == layers and variants <= {c.id for c in catalog.subset("quick")}
    assert all(c.passes == ("forward", "backward") for c in tagged(catalog, "sweeps"))


def test_the_main_job_s_other_variants_measure_every_pass_a_step_s_layer_sum_takes(catalog):
    """A variant's network is complete only with every layer in the passes its share of a step comes from: forward,
    dX and dW, or forward and the one backward of a weightless op (attention). tox's variant_args may narrow the
    passes (--pass), never below that."""
    line = next(x for x in (Path(__file__).resolve().parents[1] / "tox.ini").read_text().splitlines()
                if x.startswith("variant_args"))
    for case in catalog.subset("quick-variants"):
        planned = set(case.passes or case.op.passes)
        if "--pass " in line:
            planned &= set(line.split("--pass ")[1].split()[0].split(","))
        needs = ({"forward", "backward_data", "backward_weight"} if "backward_data" in case.op.passes
                 else {"forward", "backward"})
        assert needs <= planned, (case.id, sorted(needs - planned))


def test_quick_covers_what_it_should(catalog):
    quick = catalog.subset("quick")
    tags = Counter(t for c in quick for t in c.tags)
    assert {c.op.kind for c in quick} == {"gemm", "conv2d", "bgemm", "attention", "rnn", "spmm"}  # every layer kind
    assert any(c.op.kind == "conv2d" and c.op.depthwise for c in quick)
    assert any(c.op.kind == "conv2d" and c.op.r != c.op.s for c in quick)  # a non-square filter
    assert any(c.op.kind == "gemm" and (c.op.transpose_a or c.op.transpose_b) for c in quick)
    assert tags["seed"] == 4
    assert tags["deepbench-train"] >= 1
    assert tags["deepbench-inference-server"] + tags["deepbench-inference-device"] >= 1
    assert tags["modern"] >= 28 and tags["inference"] >= 2 and tags["decode"] >= 1
    assert 5 <= tags["sweep-gemm"] <= 6  # enough sizes to fit a log-log slope, 2048³ among them
    assert max(c.op.m for c in quick if "sweep-gemm" in c.tags) == 2048
    assert tags["sweep-conv-spatial"] >= 3 and tags["sweep-conv-channels"] >= 3


# The report fits a sweep's slope over its compute-bound points: a time at least OVERHEAD_FACTOR × the sweep's
# fastest call (reports.analysis.scaling_points). A catalog has FLOPs, not times: a point counts as compute-bound
# here when its FLOPs are MARGIN × OVERHEAD_FACTOR those of the sweep's smallest point, as a smaller conv runs at
# lower efficiency (measured here: the 7² and 16-channel points at ~0.6× the FLOP rate of the larger ones, so 16×
# the FLOPs, the 28² point, was only ~9× the time: "too few points" for every conv sweep).
MARGIN = 2.0


@pytest.mark.parametrize("sweep", ["sweep-gemm", "sweep-conv-spatial", "sweep-conv-channels"])
def test_each_quick_sweep_has_enough_compute_bound_points_to_fit(catalog, sweep):
    from reports.analysis import MIN_FIT_POINTS, OVERHEAD_FACTOR, SWEEPS

    assert sweep in SWEEPS
    flops = sorted(c.op.flops("forward") for c in catalog.subset("quick") if sweep in c.tags)
    bound = [f for f in flops if f >= MARGIN * OVERHEAD_FACTOR * flops[0]]
    assert len(bound) >= MIN_FIT_POINTS, (sweep, [f / flops[0] for f in flops])
