"""``python -m suite``: the command line; a Python without opbench's dependencies gets one line saying which."""

import sys

from suite import missing_module

try:
    from suite.cli import main
except ModuleNotFoundError as exc:  # numpy, scipy, PyYAML or rich not installed in this Python
    message = missing_module(exc)
    if message is None:
        raise
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)

sys.exit(main())
