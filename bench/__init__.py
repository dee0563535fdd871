"""pynn's benchmarks. They live in a source checkout, not in the installed package.

``python -m pynn.bench`` (or ``python -m bench``, from the repository root) runs the suite,
``suite.py``; see ``bench/README.md``. ``python -m bench.readme RESULTS.json`` writes the
README's performance section from a results file.
"""
