"""Mutation score per module from mutmut's results in ``mutants/`` (run by ``tox -e mutation`` after ``mutmut run``).

Not a test (pytest collects only ``test_*.py``). Score = killed / (killed + survived); mutants no test reaches
("no tests") count as survived, timeouts as killed, as mutmut's own summary does.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

KILLED = {1, 3, 36, 24, -24, 152, 255, 37}  # killed, pytest internal error, timeouts, type check
SURVIVED = {0, 5, 33}  # survived, no tests


def main(root: Path = Path("mutants")) -> int:
    metas = sorted(root.rglob("*.py.meta"))
    if not metas:
        print(f"no mutmut results under {root}/; run `mutmut run` first", file=sys.stderr)
        return 2
    total = Counter()
    print(f"{'module':<22} {'killed':>7} {'survived':>9} {'other':>6} {'score':>7}")
    for meta in metas:
        codes = json.loads(meta.read_text())["exit_code_by_key"].values()
        count = Counter("killed" if c in KILLED else "survived" if c in SURVIVED else "other" for c in codes)
        total += count
        module = str(meta.relative_to(root)).removesuffix(".meta")
        print(f"{module:<22} {count['killed']:>7} {count['survived']:>9} {count['other']:>6} {score(count):>7}")
    print(f"{'all':<22} {total['killed']:>7} {total['survived']:>9} {total['other']:>6} {score(total):>7}")
    return 0


def score(count: Counter) -> str:
    judged = count["killed"] + count["survived"]
    return f"{100 * count['killed'] / judged:.1f}%" if judged else "–"


if __name__ == "__main__":
    sys.exit(main())
