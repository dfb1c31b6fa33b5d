#!/usr/bin/env python3
"""Print a reproducible random sample of mutmut's mutant names for one module, to run with ``mutmut run``.

A whole module has 700 to 1,600 mutants and takes hours on two cores; a random sample of a few hundred gives
its score within a few points (CONTRIBUTING.md gives the 95% interval with each score). Run ``mutmut run`` once
first (any filter) so that the mutants exist, then:

    mutmut run --max-children 1 $(python scripts/mutation_sample.py tachyon_api.compiler 300)
    python scripts/mutation_sample.py tachyon_api.compiler 300 --score

``--pending`` prints only the names not checked yet, to resume an interrupted run.
"""

from __future__ import annotations

import argparse
import math
import random
import subprocess


def mutants() -> dict[str, str]:
    """Every mutant's name and status, as ``mutmut results --all true`` lists them."""
    out = subprocess.run(["mutmut", "results", "--all", "true"], capture_output=True, text=True, check=True).stdout
    statuses = {}
    for line in out.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if name:
            statuses[name] = status
    return statuses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("module", help="dotted module name, e.g. tachyon_api.compiler or tachyon_api.backends")
    parser.add_argument("size", type=int)
    parser.add_argument("--seed", type=int, default=20261201)
    parser.add_argument("--score", action="store_true", help="print the sample's score instead of its names")
    parser.add_argument("--pending", action="store_true", help="only the names of the sample not checked yet")
    args = parser.parse_args()
    statuses = mutants()
    names = sorted(name for name in statuses if name.startswith(args.module + "."))
    sample = random.Random(args.seed).sample(names, min(args.size, len(names)))
    if not args.score:
        print("\n".join(name for name in sample if not args.pending or statuses[name] == "not checked"))
        return
    counts: dict[str, int] = {}
    for name in sample:
        counts[statuses[name]] = counts.get(statuses[name], 0) + 1
    checked = sum(n for status, n in counts.items() if status != "not checked")
    killed = counts.get("killed", 0) + counts.get("timeout", 0)
    share = killed / checked if checked else 0.0
    margin = 1.96 * math.sqrt(share * (1 - share) / checked) if checked else 0.0  # normal approximation
    print(
        f"{args.module}: {killed} / {checked} = {share:.1%} (95% interval +-{margin:.1%}) "
        f"of a sample of {len(sample)} among {len(names)} mutants; {counts}"
    )


if __name__ == "__main__":
    main()
