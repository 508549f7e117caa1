"""Backend discovery through entry points, so a fourth framework or a team's own build plugs in without editing opbench.

An installed distribution announces a backend in two entry-point groups (opbench's own three do the same in its
pyproject.toml, so there is one path):

- ``opbench.backends``: name = ``"module:Class"``, a subclass of :class:`backends.base.Backend`;
- ``opbench.frameworks`` (optional): the same name = the top-level module whose presence means the framework is
  installed. Without it the framework counts as installed (a plugin that depends on its framework outright).

Listing and availability read only this metadata and ``importlib.util.find_spec``: no framework is imported. A
name clash or a broken plugin becomes a message naming the plugin and its package; the other backends keep working.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from dataclasses import dataclass
from functools import cache
from importlib.metadata import EntryPoint, distribution, entry_points, packages_distributions
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from backends.base import Backend, Settings

GROUP = "opbench.backends"
FRAMEWORK_GROUP = "opbench.frameworks"
HOME = "opbench"  # the distribution whose backends win a name clash
TOX_ENV = {"torch": "torch-cpu", "tensorflow": "tf-cpu", "jax": "jax-cpu"}
ALIASES = {"tf": "tensorflow", "pytorch": "torch"}
REQUIRED_LAYOUTS = ("gemm", "conv2d")  # op kinds every backend declares layouts for (it may refuse one whole)


class BackendUnavailable(RuntimeError):
    """The backend's framework is not installed, its plugin is broken, or the name is unknown."""


@dataclass(frozen=True)
class Entry:
    """One registered backend, as its entry points declare it."""

    name: str
    target: str  # "module:Class"
    package: str  # the distribution that declares it, with its version
    framework: str | None  # top-level module whose presence means the framework is installed
    extras: tuple[str, ...] = ()  # the declaring distribution's extras (install advice)

    def describe(self) -> str:
        return f"backend plugin {self.name!r} ({self.target}, from package {self.package})"


def _package(ep: EntryPoint) -> tuple[str, str, tuple[str, ...]]:
    dist = ep.dist
    if dist is None:
        return "", "an unknown package", ()
    return dist.metadata["Name"], f"{dist.metadata['Name']} {dist.version}", tuple(
        dist.metadata.get_all("Provides-Extra") or ())


def discover() -> tuple[dict[str, Entry], list[str]]:
    """Every backend the installed distributions declare, and the problems found (clashes, bad declarations)."""
    frameworks = {(ep.dist.metadata["Name"] if ep.dist else None, ep.name): ep.module.split(".")[0]
                  for ep in entry_points(group=FRAMEWORK_GROUP)}
    found: dict[str, Entry] = {}
    problems: list[str] = []
    order = list(TOX_ENV)  # opbench's own first, in their usual order; then plugins by package and name
    declared = sorted(entry_points(group=GROUP), key=lambda ep: (
        _package(ep)[0] != HOME, _package(ep)[0], order.index(ep.name) if ep.name in order else len(order), ep.name))
    for ep in declared:
        dist_name, package, extras = _package(ep)
        entry = Entry(ep.name, ep.value, package, frameworks.get((dist_name, ep.name)), extras)
        if ":" not in ep.value:
            problems.append(f"{entry.describe()} is ignored: the entry point must name a class as 'module:Class'")
        elif ep.name in ALIASES:
            problems.append(f"{entry.describe()} is ignored: {ep.name!r} is an alias of {ALIASES[ep.name]!r}")
        elif ep.name in found:
            first = found[ep.name]
            problems.append(f"{entry.describe()} is ignored: the name {ep.name!r} is already taken by "
                            f"{first.target} from package {first.package}")
        else:
            found[ep.name] = entry
    if not any(entry.package.startswith(f"{HOME} ") for entry in found.values()):
        problems.append(f"opbench's own backends ({', '.join(TOX_ENV)}) are not registered: its package metadata is "
                        "missing or stale; reinstall it (pip install -e . in the opbench folder)")
    return found, problems


REGISTRY, IGNORED = discover()  # IGNORED: why declared entries were left out


def canonical(name: str) -> str:
    name = ALIASES.get(name, name)
    if name not in REGISTRY:
        raise BackendUnavailable(f"unknown backend {name!r}; known: {', '.join(REGISTRY)}")
    return name


def is_available(name: str) -> bool:
    """Whether the framework is installed, found without importing it (or the plugin's own code)."""
    framework = REGISTRY[canonical(name)].framework
    return framework is None or importlib.util.find_spec(framework) is not None


def framework_package(name: str) -> str | None:
    """The installed distribution(s) providing the framework's module, with versions (e.g. 'tensorflow-cpu 2.21.0')."""
    framework = REGISTRY[canonical(name)].framework
    dists = (distribution(name) for name in dict.fromkeys(packages_distributions().get(framework or "", [])))
    return ", ".join(f"{dist.metadata['Name']} {dist.version}" for dist in dists) or None


def install_advice(name: str) -> str:
    """How to install a backend's framework, from its package's extras and the tox envs."""
    entry = REGISTRY[canonical(name)]
    dist = entry.package.split(" ")[0]
    how = f"pip install '{dist}[{name}]'" if name in entry.extras else \
        f"install the package that provides the {entry.framework!r} module"
    return how + (f", or run it through its tox env: tox -e {TOX_ENV[name]}" if name in TOX_ENV else "")


@cache
def backend_class(name: str) -> type[Backend]:
    """The backend's class, for its modes and layouts; its module imports no framework at top level.

    Raises BackendUnavailable naming the plugin and its package when the class cannot be imported or does not
    implement the contract.
    """
    entry = REGISTRY[canonical(name)]
    module_name, _, class_name = entry.target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except Exception as exc:  # a plugin's import may fail in any way; the other backends go on
        raise BackendUnavailable(f"{entry.describe()} cannot be imported: {type(exc).__name__}: {exc}") from None
    problem = contract_problem(cls, name)
    if problem:
        raise BackendUnavailable(f"{entry.describe()} does not implement the backend contract: {problem}")
    return cls


def contract_problem(cls: object, name: str) -> str | None:
    """What is missing for ``cls`` to be a backend named ``name`` (None: nothing)."""
    from backends.base import Backend

    if not (inspect.isclass(cls) and issubclass(cls, Backend)):
        return f"{cls!r} is not a subclass of backends.base.Backend"
    if inspect.isabstract(cls):
        return f"abstract methods not implemented: {', '.join(sorted(cls.__abstractmethods__))}"
    if getattr(cls, "name", None) != name:
        return f"its name attribute is {getattr(cls, 'name', None)!r}, not the entry point's {name!r}"
    modes = getattr(cls, "modes", None)
    if not (isinstance(modes, tuple) and modes and all(isinstance(m, str) and m for m in modes)):
        return f"modes must be a non-empty tuple of names (the first is the default), got {modes!r}"
    layouts = getattr(cls, "layouts", None)
    if not isinstance(layouts, dict) or any(not (isinstance(layouts.get(kind), tuple) and layouts[kind])
                                            for kind in REQUIRED_LAYOUTS):
        return f"layouts must map each of {', '.join(REQUIRED_LAYOUTS)} to a non-empty tuple of names, got {layouts!r}"
    return None


def problems() -> list[str]:
    """Every plugin problem: clashes and bad declarations, and installed backends whose class fails to load."""
    found = list(IGNORED)
    for name in REGISTRY:
        if is_available(name):
            try:
                backend_class(name)
            except BackendUnavailable as exc:
                found.append(str(exc))
    return found


def available() -> list[str]:
    """Backends whose framework is installed and whose class loads; see problems() for the others."""
    names = []
    for name in REGISTRY:
        if is_available(name):
            try:
                backend_class(name)
            except BackendUnavailable:
                continue
            names.append(name)
    return names


def load(name: str, settings: Settings | None = None) -> Backend:
    """Import and instantiate a backend; a missing framework gives a message that says how to install it."""
    name = canonical(name)
    if not is_available(name):
        raise BackendUnavailable(f"backend {name!r} needs the {REGISTRY[name].framework!r} module, which is not "
                                 f"installed in this environment ({install_advice(name)})")
    return backend_class(name)(settings)
