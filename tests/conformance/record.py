"""Record the live kernel's results for every scenario (needs root, clang, libbpf).

    sudo .venv/bin/python -m tests.conformance.record

Writes ``tests/conformance/recorded/kernel-<uname -r>.json``.
"""

from __future__ import annotations

import sys

from ._bpf import availability
from ._kernel import run_on_kernel
from ._recorded import write_recorded
from ._scenario import load_scenarios


def main() -> int:
    why = availability()
    if why is not None:
        print(f"cannot record: the kernel side cannot run here: {why}", file=sys.stderr)
        return 1
    results = {sc.name: (sc, run_on_kernel(sc)) for sc in load_scenarios()}
    path = write_recorded(results)
    print(f"recorded {len(results)} scenarios in {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
