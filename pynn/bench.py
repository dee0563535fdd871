"""``python -m pynn.bench``: pynn's benchmark suite (``bench/suite.py`` of a checkout).

The benchmarks live in the repository's ``bench/`` folder, beside this package, and are not
installed with it. From a checkout this puts the repository root on ``sys.path`` and runs the
suite with the same flags; elsewhere it says how to get one and exits with status 2.
"""

import sys
from pathlib import Path

NO_CHECKOUT = (
    "pynn's benchmarks live in its source repository (bench/), not in the installed package.\n"
    "Get a checkout of pynn, build it (make build) and run from its root: python -m bench"
)


def main(argv=None):
    root = Path(__file__).resolve().parents[1]
    if not (root / "bench" / "suite.py").is_file():
        print(NO_CHECKOUT, file=sys.stderr)
        return 2
    sys.path.insert(0, str(root))
    from bench.suite import main as suite_main

    return suite_main(argv)


if __name__ == "__main__":
    sys.exit(main())
