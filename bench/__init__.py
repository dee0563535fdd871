"""pynn's benchmarks. They live in a source checkout, not in the installed package.

``python -m bench`` (from the repository root) runs the CPU suite, ``bench_cpu.py``; see
``bench/README.md``. The other scripts run on their own: ``python bench/bench_rnn.py``,
``python bench/bench_opencl.py``, ``python bench/bench_conv_kernels.py``.
"""
