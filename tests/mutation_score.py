"""Mutation score per module from mutmut's results in ``mutants/`` (run by ``tox -e mutation`` after ``mutmut run``).

Not a test (pytest collects only ``test_*.py``). Score = killed / (killed + survived) over the mutants the fast tests
reach; "no tests" counts the mutants in code no fast test runs (worker processes, GPU paths), shown apart.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

KILLED = {1, 3, 36, 24, -24, 152, 255, 37}  # killed, pytest internal error, timeouts, type check
VERDICTS = {0: "survived", 5: "no tests", 33: "no tests", None: "not run"}
COLUMNS = ("killed", "survived", "no tests", "not run")


def verdict(code: int | None) -> str:
    return "killed" if code in KILLED else VERDICTS.get(code, "other")


def score(count: Counter) -> str:
    judged = count["killed"] + count["survived"]
    return f"{100 * count['killed'] / judged:.1f}%" if judged else "–"


def main(root: Path = Path("mutants")) -> int:
    metas = sorted(root.rglob("*.py.meta"))
    if not metas:
        print(f"no mutmut results under {root}/; run `mutmut run` first", file=sys.stderr)
        return 2
    total: Counter = Counter()
    print(f"{'module':<22}" + "".join(f"{c:>10}" for c in COLUMNS) + f"{'score':>9}")
    for meta in metas:
        count = Counter(verdict(c) for c in json.loads(meta.read_text())["exit_code_by_key"].values())
        total += count
        module = str(meta.relative_to(root)).removesuffix(".meta")
        print(f"{module:<22}" + "".join(f"{count[c]:>10}" for c in COLUMNS) + f"{score(count):>9}")
    print(f"{'all':<22}" + "".join(f"{total[c]:>10}" for c in COLUMNS) + f"{score(total):>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
