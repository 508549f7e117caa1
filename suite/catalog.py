"""The shape catalog: YAML files under shapes/ → validated, frozen Cases, and named subsets.

A catalog file holds ``cases:`` (a list of entries) and optionally ``defaults:`` (provenance fields and tags
merged into every entry, and passes for every entry that names none). ``shapes/subsets.yaml`` names subsets by
tags. Every problem raises :class:`CatalogError` naming the file, the entry and the field, before any framework is
imported.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, dataclass, field
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any

import yaml

from suite.ops import DTYPES, OP_KINDS, InvalidDims, Op

SHAPES_DIR = Path(__file__).resolve().parent.parent / "shapes"
WHOLE_CATALOG = "all"  # the subset every catalog has, without naming it in subsets.yaml: every case of its folders
SUBSETS_FILE = "subsets.yaml"

ENTRY_KEYS = {"id", "op", "dims", "provenance", "count", "tags", "dtypes", "passes"}
PROVENANCE_KEYS = {"network", "layer", "source", "derivation"}
REQUIRED_PROVENANCE = ("network", "layer", "source")
INT64_MAX = 2**63 - 1  # the largest index (and element count) a framework's tensors take


class CatalogError(ValueError):
    """A catalog problem, located by file, entry and field."""

    def __init__(self, file: str | Path, problem: str, entry: str | None = None, field: str | None = None):
        self.file, self.entry, self.field, self.problem = str(file), entry, field, problem
        where = self.file + (f": {entry}" if entry else "") + (f", field '{field}'" if field else "")
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class Provenance:
    network: str
    layer: str
    source: str
    derivation: str = ""


@dataclass(frozen=True)
class Case:
    """One catalog entry: what is measured, and where the shape comes from."""

    id: str
    op: Op
    provenance: Provenance
    count: int = 1
    tags: tuple[str, ...] = ()
    file: str = field(default="", compare=False)
    dtypes: tuple[str, ...] = ()  # measured in these too, whatever the run's --dtype (the main job's int8 GEMM)
    passes: tuple[str, ...] = ()  # measured in these passes only (an inference baseline: forward); () every pass


# ------------------------------------------------------------------------------------------------ networks
PHASES = {"train": "training step", "prefill": "prefill", "decode": "decode", "inference": "inference"}
FIRST_LAYER_TAG = "first-layer"  # the network's first layer: its input is the data, which needs no gradient


def phase_of(tags: Iterable[str]) -> str | None:
    """The network phase a layer belongs to, from its catalog tags (prefill and decode kept apart)."""
    tags = set(tags)
    return next((label for tag, label in PHASES.items() if tag in tags), None)


def set_of(tags: Iterable[str], network: str, phase: str) -> str:
    """The layer set a case belongs to: its tag ``net:<id>`` (one network at one batch and phase), else the network
    and phase."""
    return next((t.removeprefix("net:") for t in tags if t.startswith("net:")), f"{network} · {phase}")


@dataclass(frozen=True)
class NetworkLayer:
    """One distinct layer of a network set: its case, how often the network runs it, and its role in a step."""

    case: str
    count: int = 1
    first_layer: bool = False  # its input is the data: a training step computes no dX for it
    weightless: bool = False  # no weight operand (attention): its one backward is all data gradients


@dataclass(frozen=True)
class NetworkSet:
    """A catalog layer set: one network at one batch and phase, with every layer the catalog lists for it. Runs
    record the sets of their catalog, so a report judges completeness by the catalog the run used."""

    set: str
    network: str
    phase: str
    layers: tuple[NetworkLayer, ...]

    @classmethod
    def from_record(cls, data: Mapping[str, Any]) -> NetworkSet:
        return cls(str(data["set"]), str(data["network"]), str(data["phase"]),
                   tuple(NetworkLayer(str(layer["case"]), int(layer.get("count", 1)),
                                      bool(layer.get("first_layer", False)), bool(layer.get("weightless", False)))
                         for layer in data["layers"]))

    def to_record(self) -> dict[str, Any]:
        return {"set": self.set, "network": self.network, "phase": self.phase,
                "layers": [vars(layer).copy() for layer in self.layers]}


def network_sets(cases: Iterable[Case]) -> tuple[NetworkSet, ...]:
    """The network layer sets among ``cases``: cases with a phase tag and a ``net:`` tag (or ``modern``)."""
    sets: dict[tuple[str, str, str], list[NetworkLayer]] = {}
    for c in cases:
        phase = phase_of(c.tags)
        if phase and ("modern" in c.tags or any(t.startswith("net:") for t in c.tags)):
            key = (set_of(c.tags, c.provenance.network, phase), c.provenance.network, phase)
            sets.setdefault(key, []).append(NetworkLayer(c.id, c.count, FIRST_LAYER_TAG in c.tags,
                                                         "backward_weight" not in c.op.passes))
    return tuple(NetworkSet(s, network, phase, tuple(layers)) for (s, network, phase), layers in sets.items())


def sets_touching(sets: Iterable[NetworkSet], case_ids: Iterable[str]) -> tuple[NetworkSet, ...]:
    """The sets with at least one of ``case_ids`` among their layers (what a run records in its header)."""
    ids = set(case_ids)
    return tuple(s for s in sets if any(layer.case in ids for layer in s.layers))


@dataclass(frozen=True)
class Subset:
    name: str
    description: str
    tags: tuple[str, ...] = ()  # a case belongs if it has any of these (empty: every case) ...
    exclude_tags: tuple[str, ...] = ()  # ... and none of these

    def __contains__(self, case: Case) -> bool:
        tags = set(case.tags)
        return (not self.tags or bool(tags & set(self.tags))) and not tags & set(self.exclude_tags)


@dataclass(frozen=True)
class Catalog:
    cases: tuple[Case, ...]
    subsets: Mapping[str, Subset]

    def subset(self, name: str) -> list[Case]:
        if name not in self.subsets:
            raise CatalogError(SUBSETS_FILE, f"unknown subset {name!r}{did_you_mean(name, self.subsets)}; "
                               f"known: {', '.join(self.subsets)}")
        return [case for case in self.cases if case in self.subsets[name]]

    def by_id(self) -> dict[str, Case]:
        return {case.id: case for case in self.cases}


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest of ``choices``, or '' when none is close: for every unknown name."""
    by_lower = {choice.lower(): choice for choice in choices}
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=1)
    return f" (did you mean {by_lower[close[0]]!r}?)" if close else ""


def _unknown_keys(data: Mapping[str, Any], allowed: set[str], err, prefix: str = "") -> None:
    for key in data:
        if key not in allowed:
            raise err(f"unknown key{did_you_mean(str(key), allowed)}; allowed: {', '.join(sorted(allowed))}",
                      f"{prefix}{key}")


def _positive_int(value: Any, err, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise err(f"must be an integer >= {minimum}, got {value!r}", name)
    if value > INT64_MAX:
        raise err(f"{value} is beyond int64 (2**63 - 1): no framework can index it", name)
    return value


def _check_elements(op: Op, err) -> None:
    """Every tensor of the op must be indexable: its element count within int64."""
    names = {"x": "input", "w": "weight", "dy": "output"}  # dy has the output's shape
    for role, shape in {**op.operands, "dy": op.out_shape}.items():
        role = names.get(role, role)
        elements = math.prod(shape)
        if elements > INT64_MAX:
            raise err(f"the {role} tensor {'×'.join(map(str, shape))} has {elements:.3g} elements, beyond int64 "
                      "(2**63 - 1): no framework can index it", "dims")


def _pair(value: Any, err, name: str, minimum: int) -> tuple[int, int]:
    """An int (both dims) or a [height, width] list."""
    items = value if isinstance(value, list) else [value, value]
    if len(items) != 2:
        raise err(f"must be an integer or a [height, width] pair, got {value!r}", name)
    return tuple(_positive_int(v, err, name, minimum) for v in items)  # type: ignore[return-value]


def _padding(value: Any, err) -> tuple[int, int, int, int]:
    """An int, [pad_h, pad_w], or [top, bottom, left, right]."""
    items = value if isinstance(value, list) else [value]
    if len(items) not in (1, 2, 4):
        raise err(f"must be an integer, [pad_h, pad_w] or [top, bottom, left, right], got {value!r}",
                  "dims.padding")
    pads = [_positive_int(v, err, "dims.padding", 0) for v in items]
    if len(pads) == 1:
        return (pads[0],) * 4  # type: ignore[return-value]
    if len(pads) == 2:
        return (pads[0], pads[0], pads[1], pads[1])
    return tuple(pads)  # type: ignore[return-value]


def dim_forms(kind: str) -> dict[str, tuple[str, bool]]:
    """Each dimension of an op kind with its form and whether the catalog must give it, read off the op's dataclass
    fields (one definition of the dims): "int" (>= 1), "int?" (>= 1 or left to default), "flag", "choice" (one of the
    kind's ``choices``), "pair" (an int or [height, width], >= 1), "padding" or "fraction" (a number in (0, 1))."""
    forms = {"int": "int", "int | None": "int?", "bool": "flag", "str": "choice", "tuple[int, int]": "pair",
             "tuple[int, int, int, int]": "padding", "float": "fraction"}
    return {f.name: (forms[str(f.type)], f.default is MISSING) for f in dataclass_fields(OP_KINDS[kind])}


def build_op(kind: str, dims: Mapping[str, Any], err) -> Op:
    """Validate ``dims`` for an op kind and build the frozen spec."""
    if not isinstance(dims, Mapping):
        raise err(f"must be a mapping of dimension names to integers, got {type(dims).__name__}", "dims")
    forms = dim_forms(kind)
    _unknown_keys(dims, set(forms), err, "dims.")
    spec = dict(dims)
    for name, (form, required) in forms.items():
        where = f"dims.{name}"
        if form == "choice":
            choices = OP_KINDS[kind].choices[name]
            if name not in dims:
                raise err(f"is required: one of {', '.join(choices)}", where)
            if dims[name] not in choices:
                raise err(f"unknown {name} {dims[name]!r}{did_you_mean(str(dims[name]), choices)}; known: "
                          f"{', '.join(choices)}", where)
        elif name not in dims:
            if required:
                raise err("is required", where)
        elif form in ("int", "int?"):
            _positive_int(dims[name], err, where)
        elif form == "flag" and not isinstance(dims[name], bool):
            raise err(f"must be true or false, got {dims[name]!r}", where)
        elif form == "pair":
            spec[name] = _pair(dims[name], err, where, 1)
        elif form == "fraction":
            value = dims[name]
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
                raise err(f"must be a number strictly between 0 and 1, got {value!r}", where)
            spec[name] = float(value)
        elif form == "padding":
            spec[name] = _padding(dims[name], err)
    try:
        op = OP_KINDS[kind](**spec)
    except InvalidDims as exc:  # e.g. heads not a multiple of kv_heads
        raise err(str(exc), f"dims.{exc.field}") from None
    except ValueError as exc:  # geometry that cannot exist (filter larger than input, groups not dividing c)
        raise err(str(exc), "dims") from None
    _check_elements(op, err)
    return op


def parse_entry(raw: Any, file: str | Path, index: int, defaults: Mapping[str, Any]) -> Case:
    label = f"entry {index}"
    if isinstance(raw, Mapping) and isinstance(raw.get("id"), str):
        label += f" (id '{raw['id']}')"

    def err(problem: str, field_name: str | None = None) -> CatalogError:
        return CatalogError(file, problem, label, field_name)

    if not isinstance(raw, Mapping):
        raise err(f"must be a mapping with keys {', '.join(sorted(ENTRY_KEYS))}, got {type(raw).__name__}")
    _unknown_keys(raw, ENTRY_KEYS, err)
    for key in ("id", "op", "dims", "provenance"):
        if key not in raw and not (key == "provenance" and "provenance" in defaults):
            raise err("is required", key)
    if not isinstance(raw["id"], str) or not raw["id"].strip() or any(ch.isspace() for ch in raw["id"]):
        raise err(f"must be a non-empty string without spaces, got {raw['id']!r}", "id")
    if not isinstance(raw["op"], str) or raw["op"] not in OP_KINDS:
        raise err(f"unknown op {raw['op']!r}{did_you_mean(str(raw['op']), OP_KINDS)}; known: {', '.join(OP_KINDS)}",
                  "op")
    op = build_op(raw["op"], raw["dims"], err)

    if not isinstance(raw.get("provenance") or {}, Mapping):
        raise err("must be a mapping with network, layer, source (and optionally derivation)", "provenance")
    prov = {**(defaults.get("provenance") or {}), **(raw.get("provenance") or {})}
    _unknown_keys(prov, PROVENANCE_KEYS, err, "provenance.")
    for key in PROVENANCE_KEYS:
        if key in REQUIRED_PROVENANCE and key not in prov:
            raise err("is required", f"provenance.{key}")
        if key in prov and (not isinstance(prov[key], str) or not prov[key].strip()):
            raise err(f"must be a non-empty string, got {prov[key]!r}", f"provenance.{key}")

    count = _positive_int(raw.get("count", 1), err, "count")
    if not _is_tags(raw.get("tags") or []):
        raise err(f"must be a list of non-empty strings, got {raw.get('tags')!r}", "tags")
    tags = list(defaults.get("tags") or []) + list(raw.get("tags") or [])
    return Case(id=raw["id"], op=op, provenance=Provenance(**prov), count=count,
                tags=tuple(dict.fromkeys(tags)), file=str(file), dtypes=_dtypes(raw.get("dtypes"), op, err),
                passes=_passes(raw.get("passes", defaults.get("passes")), op, err))


def _passes(value: Any, op: Op, err) -> tuple[str, ...]:
    """An entry's own passes: each one the op has."""
    if value is None:
        return ()
    if not _is_tags(value) or not value:
        raise err(f"must be a non-empty list of passes ({', '.join(op.passes)}), got {value!r}", "passes")
    for pass_ in value:
        if pass_ not in op.passes:
            raise err(f"{op.kind} has no pass {pass_!r}{did_you_mean(pass_, op.passes)}; its passes: "
                      f"{', '.join(op.passes)}", "passes")
    return tuple(dict.fromkeys(value))


def _dtypes(value: Any, op: Op, err) -> tuple[str, ...]:
    """An entry's own dtypes: known names, each one the op has (int8 only where the kind has an int8 form)."""
    if value is None:
        return ()
    if not _is_tags(value):
        raise err(f"must be a list of dtypes ({', '.join(DTYPES)}), got {value!r}", "dtypes")
    for dtype in value:
        if dtype not in DTYPES:
            raise err(f"unknown dtype {dtype!r}{did_you_mean(dtype, DTYPES)}; known: {', '.join(DTYPES)}", "dtypes")
        refusal = op.refusal("forward", dtype)
        if refusal:
            raise err(refusal, "dtypes")
    return tuple(dict.fromkeys(value))


def _is_tags(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(t, str) and t for t in value)


def _read_yaml(path: Path) -> Any:
    try:
        # libyaml's safe loader where PyYAML was built with it: the same safe subset, much faster
        return yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except OSError as exc:
        raise CatalogError(path, f"cannot read file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise CatalogError(path, f"not UTF-8 text (byte {exc.start}); save the file as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise CatalogError(path, f"not valid YAML{where}: {problem}") from None
    except (ValueError, RecursionError) as exc:  # PyYAML builds dates like 2024-13-45 and fails
        raise CatalogError(path, f"not valid YAML: {type(exc).__name__}: {exc}") from None


def load_file(path: str | Path) -> list[Case]:
    """Load and validate one catalog file."""
    path = Path(path)
    data = _read_yaml(path)
    if not isinstance(data, Mapping) or "cases" not in data:
        raise CatalogError(path, "must be a mapping with a 'cases:' list (and optionally 'defaults:')")
    _unknown_keys(data, {"cases", "defaults", "description"}, lambda p, f: CatalogError(path, p, None, f))
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, Mapping):
        raise CatalogError(path, "must be a mapping with provenance, tags and/or passes", None, "defaults")
    _unknown_keys(defaults, {"provenance", "tags", "passes"}, lambda p, f: CatalogError(path, p, "defaults", f))
    if not isinstance(defaults.get("provenance") or {}, Mapping):
        raise CatalogError(path, "must be a mapping of provenance fields", "defaults", "provenance")
    if not _is_tags(defaults.get("tags") or []):
        raise CatalogError(path, "must be a list of non-empty strings", "defaults", "tags")
    if not isinstance(data["cases"], list):
        raise CatalogError(path, "must be a list of entries", None, "cases")
    return [parse_entry(raw, path, i, defaults) for i, raw in enumerate(data["cases"], start=1)]


def load_subsets(path: Path) -> dict[str, Subset]:
    data = _read_yaml(path)
    if not isinstance(data, Mapping) or not isinstance(data.get("subsets"), Mapping):
        raise CatalogError(path, "must be a mapping with a 'subsets:' mapping of name → {description, tags}")
    subsets = {}
    for name, spec in data["subsets"].items():
        def err(problem: str, field_name: str | None = None, name=name) -> CatalogError:
            return CatalogError(path, problem, f"subset '{name}'", field_name)

        if not isinstance(name, str) or not name:
            raise CatalogError(path, f"subset names must be non-empty strings, got {name!r}")
        if not isinstance(spec, Mapping):
            raise err("must be a mapping with description, tags, exclude_tags")
        _unknown_keys(spec, {"description", "tags", "exclude_tags"}, err)
        if not isinstance(spec.get("description"), str):
            raise err("is required (a sentence)", "description")
        for key in ("tags", "exclude_tags"):
            if not _is_tags(spec.get(key) or []):
                raise err("must be a list of tags", key)
        subsets[name] = Subset(name, spec["description"], tuple(spec.get("tags") or []),
                               tuple(spec.get("exclude_tags") or []))
    return subsets


def load_catalog(directories: str | Path | Iterable[str | Path] = SHAPES_DIR) -> Catalog:
    """Load every ``*.yaml`` catalog file of one or several folders, and each folder's subsets.

    Several folders make one catalog (a team's shapes beside the bundled ones): case ids and subset names must be
    unique across all of them, and a duplicate names both files.
    """
    folders = [directories] if isinstance(directories, str | Path) else list(directories)
    cases: list[Case] = []
    seen: dict[str, Path] = {}
    subsets: dict[str, Subset] = {}
    subset_files: dict[str, Path] = {}
    unique: dict[Path, Path] = {}
    for folder in folders:  # a folder named twice loads once; messages keep the path as given
        unique.setdefault(Path(folder).resolve(), Path(folder))
    for directory in unique.values():
        if not directory.is_dir():
            raise CatalogError(directory, "not a folder; a catalog is a folder of *.yaml files" if directory.exists()
                               else "no such catalog directory")
        for path in sorted(directory.glob("*.yaml")):
            if path.name == SUBSETS_FILE:
                continue
            for case in load_file(path):
                if case.id in seen:
                    first = seen[case.id].name if seen[case.id].parent == directory else seen[case.id]
                    raise CatalogError(path, f"duplicate id; first defined in {first}", f"id '{case.id}'", "id")
                seen[case.id] = path
                cases.append(case)
        subsets_path = directory / SUBSETS_FILE
        for name, subset in (load_subsets(subsets_path) if subsets_path.exists() else {}).items():
            if name in subsets:
                raise CatalogError(subsets_path, f"duplicate subset; first defined in {subset_files[name]}",
                                   f"subset '{name}'")
            subsets[name], subset_files[name] = subset, subsets_path
    subsets.setdefault(WHOLE_CATALOG, Subset(WHOLE_CATALOG, "every case in the catalog"))
    return Catalog(tuple(cases), subsets)
