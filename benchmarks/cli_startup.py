"""How long the `unlearn` command takes to answer --help and to refuse a bad argument, and the
memory it uses doing so; beside it, what importing the heavy libraries alone costs.

Each command runs in a fresh interpreter (as a user's shell would start it), ``--repeats`` times;
printed: median wall time and the largest peak resident memory over the runs.

    python benchmarks/cli_startup.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The child is timed and measured by a small wrapper, so each figure is that child's own.
_WRAPPER = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
seconds = time.perf_counter() - start
peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_mib": peak_kib / 1024, "code": done.returncode}))
"""

CASES = {
    "unlearn --help": ["-m", "unlearn_core.cli", "--help"],
    "unlearn erase --help": ["-m", "unlearn_core.cli", "erase", "--help"],
    "unlearn demo --help": ["-m", "unlearn_core.cli", "demo", "--help"],
    "unlearn demo --steps x (argument error)": ["-m", "unlearn_core.cli", "demo", "--steps", "x"],
    "reference: import torch, diffusers, open_clip": ["-c", "import torch, diffusers, open_clip"],
}


def measure(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-c", _WRAPPER, sys.executable, *args], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"| command | exit code | median seconds (of {args.repeats}) | peak RSS MiB |")
    print("|---|---|---|---|")
    for name, argv in CASES.items():
        runs = [measure(argv) for _ in range(args.repeats)]
        print(f"| `{name}` | {runs[0]['code']} | {statistics.median(r['seconds'] for r in runs):.2f} | "
              f"{max(r['peak_mib'] for r in runs):.0f} |", flush=True)


if __name__ == "__main__":
    main()
