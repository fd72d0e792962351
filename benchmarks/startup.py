"""Start-up of the command line: `eikd-edge --version`, `--help` and a mistyped command against the floor of any
Typer + Rich CLI (`python -c "import typer, rich"`), each the median wall time of N fresh processes.

    python -m benchmarks.startup [--runs 7] [--repo PATH]     # --repo: measure another checkout (e.g. an older one)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    'python -c "import typer, rich"': ["-c", "import typer, rich"],
    "eikd-edge --version": ["-m", "eikd_edge", "--version"],
    "eikd-edge --help": ["-m", "eikd_edge", "--help"],
    "eikd-edge expot (a typo)": ["-m", "eikd_edge", "expot"],
}


def time_once(args: list[str], repo: Path) -> float:
    """Wall seconds of one fresh `python ARGS` run from `repo`."""
    env = {**os.environ, "PYTHONPATH": str(repo), "COLUMNS": "80", "PYTHONDONTWRITEBYTECODE": "1"}
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=repo, env=env, capture_output=True, check=False)
    return time.perf_counter() - start


def measure(runs: int, repo: Path) -> dict[str, float]:
    results = {}
    for name, args in CASES.items():
        time_once(args, repo)  # warm the file cache: every run after it is comparable
        results[name] = statistics.median(time_once(args, repo) for _ in range(runs))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--repo", type=Path, default=ROOT, help="checkout to measure (default: this one)")
    options = parser.parse_args()
    results = measure(options.runs, options.repo.resolve())
    floor = results['python -c "import typer, rich"']
    print(f"| command | median wall (s), {options.runs} runs | × typer+rich |")
    print("|---|---:|---:|")
    for name, wall in results.items():
        print(f"| `{name}` | {wall:.2f} | {wall / floor:.1f} |")


if __name__ == "__main__":
    main()
