"""Backend registry: names map to import paths, so listing and availability never import a framework."""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from backends.base import Backend, Settings

# name -> (module:Class, the distribution a user installs, the module whose presence means it is installed)
TOX_ENV = {"torch": "torch-cpu", "tensorflow": "tf-cpu", "jax": "jax-cpu"}
REGISTRY: dict[str, tuple[str, str, str]] = {
    "torch": ("backends.torch_backend:TorchBackend", "torch", "torch"),
    "tensorflow": ("backends.tf_backend:TensorFlowBackend", "tensorflow", "tensorflow"),
    "jax": ("backends.jax_backend:JaxBackend", "jax", "jax"),
}
ALIASES = {"tf": "tensorflow", "pytorch": "torch"}


class BackendUnavailable(RuntimeError):
    """The backend's framework is not installed (or the name is unknown)."""


def canonical(name: str) -> str:
    name = ALIASES.get(name, name)
    if name not in REGISTRY:
        raise BackendUnavailable(f"unknown backend {name!r}; known: {', '.join(REGISTRY)}")
    return name


def is_available(name: str) -> bool:
    """Whether the framework is importable, found without importing it."""
    return importlib.util.find_spec(REGISTRY[canonical(name)][2]) is not None


def available() -> list[str]:
    return [name for name in REGISTRY if is_available(name)]


def load(name: str, settings: Settings | None = None) -> Backend:
    """Import and instantiate a backend; a missing framework gives a message that says how to install it."""
    name = canonical(name)
    target, dist, _ = REGISTRY[name]
    if not is_available(name):
        raise BackendUnavailable(
            f"backend {name!r} needs {dist}, which is not installed in this environment "
            f"(pip install 'opbench[{name}]', or run it through its tox env: tox -e {TOX_ENV[name]})"
        )
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)(settings)


def backend_class(name: str) -> type[Backend]:
    """The backend's class, for its modes and layouts; its module imports no framework at top level."""
    module_name, class_name = REGISTRY[canonical(name)][0].split(":")
    return getattr(importlib.import_module(module_name), class_name)
