"""``python -m bench``: pynn's benchmark suite (bench/suite.py), also its model workers."""

import sys

# pynn before NumPy: importing pynn sets OPENBLAS_THREAD_TIMEOUT (and OMP_WAIT_POLICY), which
# NumPy's OpenBLAS reads when it loads; imported after NumPy, its BLAS threads would spin 2^28
# cycles after every matmul and slow the pynn kernels timed next (bench/README.md).
import pynn  # noqa: F401

from bench.suite import main

sys.exit(main())
