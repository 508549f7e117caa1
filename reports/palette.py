"""The frameworks of one report in display order, each with its colour: computed once per report (``Palette.of``,
from the frameworks in the results and the backend registry's order that the CLI passes) and read by every table,
figure and the history section, so a framework has one place and one colour on the whole page.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

# Okabe & Ito (2008) colour-blind-safe palette; one fixed colour per framework in every figure.
COLORS = {"torch": "#D55E00", "tensorflow": "#0072B2", "jax": "#009E73"}
# Plugins (a fourth framework) take these in turn: reddish purple and black first, far from torch's vermillion;
# orange, the nearest to it, last.
SPARE_COLORS = ("#CC79A7", "#000000", "#56B4E9", "#E69F00")


@dataclass(frozen=True)
class Palette:
    """Frameworks in display order (``order``: the registry's first, then the others alphabetically) and their
    colours: the three main ones fixed, every other the next spare colour in that order."""

    order: tuple[str, ...] = ()
    colors: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, names: Iterable[str], registry: Iterable[str] = ()) -> Palette:
        """The palette of the frameworks ``names`` (those in the results) in the ``registry``'s order."""
        names, registry = set(names), list(dict.fromkeys(registry))
        order = tuple([n for n in registry if n in names] + sorted(names - set(registry)))
        spare = [n for n in order if n not in COLORS]
        return cls(order, {**{n: COLORS[n] for n in order if n in COLORS},
                           **{n: SPARE_COLORS[i % len(SPARE_COLORS)] for i, n in enumerate(spare)}})

    def ordered(self, names: Iterable[str]) -> list[str]:
        """The frameworks among ``names`` in this order (any the palette lacks last, alphabetically)."""
        present = set(names)
        return [n for n in self.order if n in present] + sorted(present - set(self.order))

    def color(self, name: str) -> str:
        return self.colors[name]
