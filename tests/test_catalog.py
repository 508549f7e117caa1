"""Catalog loading: every mistake is located by file, entry and field, and the CLI exits 2 without a traceback."""

import textwrap

import pytest

from suite.catalog import CatalogError, load_catalog, load_file
from suite.cli import main
from suite.ops import Conv2d, Gemm

GOOD = """
cases:
  - id: dense
    op: gemm
    dims: {m: 4, n: 8, k: 16, transpose_b: true}
    provenance: {network: Net, layer: fc, source: paper, derivation: m = batch}
    count: 2
    tags: [a]
  - id: conv
    op: conv2d
    dims: {n: 1, c: 4, h: 9, w: 7, k: 8, r: 3, s: 5, stride: [2, 1], padding: [0, 1, 2, 2], groups: 2}
    provenance: {network: Net, layer: conv1, source: paper}
"""


def write(tmp_path, text, name="shapes.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_good_file_builds_frozen_cases(tmp_path):
    dense, conv = load_file(write(tmp_path, GOOD))
    assert dense.op == Gemm(4, 8, 16, transpose_b=True) and dense.count == 2 and dense.tags == ("a",)
    assert conv.op == Conv2d(1, 4, 9, 7, 8, 3, 5, stride=(2, 1), padding=(0, 1, 2, 2), groups=2)
    assert conv.provenance.derivation == ""


@pytest.mark.parametrize(
    "change, entry, field, problem",
    [
        (("k: 16,", "k: -1,"), "entry 1 (id 'dense')", "dims.k", "integer >= 1"),
        (("k: 16,", "k: 1.5,"), "entry 1 (id 'dense')", "dims.k", "integer >= 1"),
        (("count: 2", "count: 0"), "entry 1 (id 'dense')", "count", "integer >= 1"),
        (("op: gemm", "op: gem"), "entry 1 (id 'dense')", "op", "did you mean 'gemm'"),
        (("count: 2", "cuont: 2"), "entry 1 (id 'dense')", "cuont", "did you mean 'count'"),
        (("transpose_b: true", "transpose_b: yes please"), "entry 1 (id 'dense')", "dims.transpose_b", "true or"),
        (("layer: fc, ", ""), "entry 1 (id 'dense')", "provenance.layer", "required"),
        (("r: 3, s: 5", "r: 30, s: 5"), "entry 2 (id 'conv')", "dims", "does not fit"),
        (("groups: 2", "groups: 3"), "entry 2 (id 'conv')", "dims", "divisible by groups"),
        (("stride: [2, 1]", "stride: 0"), "entry 2 (id 'conv')", "dims.stride", "integer >= 1"),
        (("stride: [2, 1]", "stride: [1, 2, 3]"), "entry 2 (id 'conv')", "dims.stride", "[height, width]"),
        (("id: conv", "id: two words"), "entry 2 (id 'two words')", "id", "without spaces"),
    ],
)
def test_mistakes_name_file_entry_and_field(tmp_path, change, entry, field, problem):
    path = write(tmp_path, GOOD.replace(*change))
    with pytest.raises(CatalogError) as caught:
        load_file(path)
    error = caught.value
    assert (error.file, error.entry, error.field) == (str(path), entry, field)
    assert problem in str(error) and str(path) in str(error)


def test_malformed_yaml_gives_the_line(tmp_path):
    path = write(tmp_path, "cases:\n  - id: x\n    dims: {m: 1\n")
    with pytest.raises(CatalogError, match=r"not valid YAML at line \d+"):
        load_file(path)


def test_duplicate_ids_across_files(tmp_path):
    write(tmp_path, GOOD, "a.yaml")
    write(tmp_path, GOOD, "b.yaml")
    with pytest.raises(CatalogError, match=r"duplicate id; first defined in a\.yaml"):
        load_catalog(tmp_path)


def test_unknown_subset_suggests(tmp_path):
    write(tmp_path, GOOD)
    write(tmp_path, "subsets:\n  quick: {description: q, tags: [a]}\n", "subsets.yaml")
    catalog = load_catalog(tmp_path)
    assert [c.id for c in catalog.subset("quick")] == ["dense"]
    with pytest.raises(CatalogError, match="did you mean 'quick'"):
        catalog.subset("quik")


def test_cli_reports_a_bad_catalog_with_exit_2_and_no_traceback(tmp_path, capsys):
    write(tmp_path, GOOD.replace("k: 16,", "k: 0,"))
    assert main(["list", "--shapes", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "entry 1 (id 'dense'), field 'dims.k'" in err and "Traceback" not in err


def test_default_passes_apply_to_entries_that_name_none(tmp_path):
    text = "defaults:\n  passes: [forward, backward]\n" + GOOD.replace(
        "    tags: [a]\n", "    tags: [a]\n    passes: [forward]\n")
    dense, conv = load_file(write(tmp_path, text))
    assert dense.passes == ("forward",) and conv.passes == ("forward", "backward")
    with pytest.raises(CatalogError, match="conv2d has no pass 'step'") as caught:
        load_file(write(tmp_path, text.replace("passes: [forward, backward]", "passes: [step]")))
    assert caught.value.entry == "entry 2 (id 'conv')" and caught.value.field == "passes"
