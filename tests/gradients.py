"""Central finite differences for the float64 references' gradient tests."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def numeric_gradient(loss: Callable[[dict[str, np.ndarray]], float], inputs: dict[str, np.ndarray], name: str,
                     step: float = 1e-6) -> np.ndarray:
    """d loss / d inputs[name], element by element, by central differences."""
    numeric = np.zeros_like(inputs[name])
    for index in np.ndindex(numeric.shape):
        plus, minus = dict(inputs), dict(inputs)
        plus[name], minus[name] = inputs[name].copy(), inputs[name].copy()
        plus[name][index] += step
        minus[name][index] -= step
        numeric[index] = (loss(plus) - loss(minus)) / (2 * step)
    return numeric
