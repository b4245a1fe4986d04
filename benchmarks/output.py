"""Where a benchmark writes its JSON, Markdown and plot.

By default into runs/benchmarks/ (git ignores runs/), so trying a benchmark never dirties the
tree; ``--commit-results`` writes into benchmarks/results/, the committed tables that
benchmarks/RESULTS.md quotes; ``--out DIR`` anywhere else.
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "benchmarks" / "results"
SCRATCH = ROOT / "runs" / "benchmarks"


def add_output_flags(parser: argparse.ArgumentParser) -> None:
    """``--out DIR`` and ``--commit-results`` (see the module docstring)."""
    parser.add_argument("--out", type=Path, default=None, help=f"output folder (default {SCRATCH})")
    parser.add_argument(
        "--commit-results", action="store_true", help=f"write into {COMMITTED} (committed)"
    )


def output_dir(args: argparse.Namespace) -> Path:
    """The folder ``args`` name (created): --out, else benchmarks/results/ with
    --commit-results, else runs/benchmarks/."""
    folder = args.out or (COMMITTED if args.commit_results else SCRATCH)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
