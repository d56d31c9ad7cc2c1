#!/usr/bin/env python
"""How long `import spared_lib` (and its light submodules) takes in a fresh interpreter.

Target: `import spared_lib` under 2 s. Heavy libraries (torch, squidpy, scanpy, lightning) must
load only when a function that needs them is first called.

    python benchmarks/import_time.py [--repeat 5]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

HEAVY = ("torch", "torchvision", "lightning", "squidpy", "scanpy", "ray")
MODULES = ["spared_lib", "spared_lib.data", "spared_lib.plotting"]


def time_import(module: str) -> tuple[float, list[str]]:
    """Wall seconds for `import module` in a new interpreter, and the heavy modules it pulled in."""
    code = (f"import time, sys; t = time.perf_counter(); import {module}; "
            f"dt = time.perf_counter() - t; "
            f"print(dt); print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    return float(out[0]), [m for m in out[1].split(",") if m]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    time_import("spared_lib")  # warm the file cache and the .pyc files
    print(f"{'module':<24} {'median s':>9} {'max s':>7}  heavy modules imported")
    worst = 0.0
    for module in MODULES:
        t0 = time.perf_counter()
        runs = [time_import(module) for _ in range(args.repeat)]
        times = [r[0] for r in runs]
        worst = max(worst, statistics.median(times)) if module == "spared_lib" else worst
        print(f"{module:<24} {statistics.median(times):>9.3f} {max(times):>7.3f}  {', '.join(runs[0][1]) or '-'}")
    target = 2.0
    print(f"import spared_lib: {worst:.3f} s (target < {target} s): {'OK' if worst < target else 'TOO SLOW'}")
    return 0 if worst < target else 1


if __name__ == "__main__":
    sys.exit(main())
