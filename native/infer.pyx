"""Native steps of one-thread inference plans (pynn/inference.py, issue 16): a run of Dense
layers as one native call (DenseChain, with predict_one as a batch-1 MLP's whole call), max
pooling without argmax (MaxPool2D) and conv.pyx's direct Conv2D forward with everything that
does not depend on x made once (Conv2DDirect). Their one-sample paths enter no OpenMP
region (even a `parallel if (false)` forms a team of one: about 0.5 us a layer).

Legend: N batch (rows), C input features (channels), U units; x (N, C0), each Dense kernel
(C, U) as in Keras; images NHWC, H/W spatial, F filters.

At batch 1 the MLP's three GEMMs take about as long as the Python between them: argument
checks, typed-memoryview acquisition of four arrays per op and one OpenMP region per op. Here
the chain's kernels, biases, sizes and activations are resolved once (``DenseChain``), and
``run`` does every layer inside one ``with nogil`` block: the product (one row: _gemv.h's
streaming GEMV, as BLAS would first pack the whole kernel; several rows: _microkernel.h's
register-blocked rows GEMM, which beat BLAS's sgemm at these sizes on one thread), then
_activation.pxd's epilogue (dense_forward's), the intermediates ping-ponging in a scratch
buffer. So the GIL is held only to enter and leave, and threads sharing a model overlap.
Both products sum each output over the inputs in order with one FMA per term (the FMA
levels), so a sample's answer does not depend on the batch it came in.

Used for small float32 products only (the plan's one-thread case). dense_forward's BLAS
sums in another order, so this chain's results equal dense_forward's to float32 rounding,
not bit for bit.
"""

from libc.math cimport NAN
from _openmp cimport omp_get_max_threads
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

import numpy as np

from pynn.backend._scratch import aligned_empty

cimport numpy as cnp

from _activation cimport ACT_RELU, ACT_SOFTMAX, act_forward_vec, bias_activation_rows, softmax_row

from cpython.pystate cimport PyThreadState

cdef extern from "_gil.h":
    PyThreadState* pynn_gil_release() noexcept nogil
    void pynn_gil_acquire(PyThreadState* state) noexcept nogil

cdef extern from "_gemv.h":
    void pynn_gemv_f(Py_ssize_t c, Py_ssize_t u, const float* x, const float* k,
                     Py_ssize_t ldk, float* y) noexcept nogil
    void pynn_gemv_rows_f(Py_ssize_t n, Py_ssize_t c, Py_ssize_t u, const float* x,
                          Py_ssize_t ldx, const float* k, Py_ssize_t ldk, float* y,
                          Py_ssize_t ldy) noexcept nogil
    void pynn_gemv_skip_f(Py_ssize_t c, Py_ssize_t u, const float* x, const float* k,
                          Py_ssize_t ldk, float* y, int* idx) noexcept nogil
    int PYNN_GEMV_ROWS_MAX

# pynn_gemv_skip_f's index buffer, on the stack of the thread running the GEMV (_gemv.h's
# PYNN_GEMV_SKIP_MAX: longer rows take the plain GEMV)
DEF _SKIP_MAX = 8192

cdef enum:
    POOL_PARALLEL_MIN = 32768  # input values (pool.pyx's threshold for its own kernel)
    # A one-row Dense layer of this many multiply-adds (its kernel's floats) or more splits
    # its columns over the worker team when pynn has several threads: each thread then
    # reads its own part of the kernel, which stays in that core's L2 between calls.
    LANE_SPLIT_MIN_MACS = 65536
    # A lane's split kernel is copied in per-thread blocks up to this size (see _lane).
    LANE_PACK_MAX_BYTES = 4 << 20
    # A lane's pooling of this many input values or more splits its rows alike.
    LANE_SPLIT_MIN_VALUES = 8192
    # A split step of this many multiply-adds (a convolution's direct count) or more wakes
    # sleeping workers (an ordinary team job); below it the step runs alone while they
    # sleep (an affine job, as a lane's layers: waking one costs a virtual machine 20-60
    # us). From about 180 us of work on one thread: a Winograd conv at batch 2-4 and up. A
    # plan too large for keep-warm (the residual CNN at batch 64) found its worker asleep
    # at nearly every Winograd conv and ran them all on one thread: 31.2 -> 18.1 ms
    # (Intel Xeon, two threads).
    WAKE_MIN_MACS = 1 << 25

include "_microkernel.pxi"   # pynn._config.set_kernel reaches the GEMV's level too
include "_team.pxi"

cnp.import_array()

# One sample's intermediates up to this many floats live on the calling thread's stack, so
# threads sharing a chain share no scratch (and need no per-thread lookup).
DEF STACK_SCRATCH = 4096
# Columns a narrow layer's kernel is padded to for the rows product, and columns of each
# packed panel of a kernel (see DenseChain).
DEF _PAD_COLS = 16
DEF _PANEL_COLS = 64


ctypedef struct _ChainJob:
    void* chain         # the DenseChain, borrowed for the call
    const float* x
    float* scratch
    float* out
    Py_ssize_t n, per, stride, ldx, ldo


ctypedef struct _GemvColsJob:
    const float* x
    const float* k
    float* y
    Py_ssize_t c, u, cols
    bint packed         # the kernel's blocks stored apart (else the kernel as given)
    bint skip           # x's zero rows skipped (pynn_gemv_skip_f)


cdef void _gemv_cols_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    """Column blocks [begin, end) of one row's product, `cols` columns each, each block's
    kernel columns stored contiguously (DenseChain._lane: block b at c * b * cols) or read in
    place."""
    cdef _GemvColsJob* j = <_GemvColsJob*>ctx
    cdef long b
    cdef Py_ssize_t j0, w
    cdef int idx[_SKIP_MAX]
    for b in range(begin, end):
        j0 = b * j.cols
        if j0 < j.u:
            w = min(j.cols, j.u - j0)
            if j.packed and j.skip:
                pynn_gemv_skip_f(j.c, w, j.x, j.k + j.c * j0, w, j.y + j0, idx)
            elif j.packed:
                pynn_gemv_f(j.c, w, j.x, j.k + j.c * j0, w, j.y + j0)
            elif j.skip:
                pynn_gemv_skip_f(j.c, w, j.x, j.k + j0, j.u, j.y + j0, idx)
            else:
                pynn_gemv_f(j.c, w, j.x, j.k + j0, j.u, j.y + j0)


cdef void _chain_blocks_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _ChainJob* j = <_ChainJob*>ctx
    cdef long b
    cdef Py_ssize_t r0
    for b in range(begin, end):
        r0 = b * j.per
        if r0 < j.n:
            (<DenseChain>j.chain)._forward(j.x + r0 * j.ldx, j.scratch + b * j.stride,
                                           j.out + r0 * j.ldo,
                                           <int>(j.per if j.n - r0 > j.per else j.n - r0),
                                           True, 1, NULL)


cdef class DenseChain:
    """Dense layers applied in order: y = act_L(... act_1(x @ K_1 + b_1) ... @ K_L + b_L).
    The arrays given stay referenced (and unchanged: the plan is rebuilt when weights
    change) for the chain's life."""

    cdef object _arrays
    cdef const Py_ssize_t[::1] _kernels
    cdef const Py_ssize_t[::1] _biases
    cdef const int[::1] _dims
    cdef const int[::1] _cins
    cdef const int[::1] _acts
    cdef const float[::1] _alphas
    cdef const Py_ssize_t[::1] _panels
    cdef const int[::1] _pads
    cdef const int[::1] _src
    cdef const int[::1] _dst
    cdef const int[::1] _res
    # per layer: a one-row GEMV skips its input's zero rows (its input a relu's output and
    # its kernel finite: pynn_gemv_skip_f)
    cdef int[::1] _skip
    cdef readonly int rows, layers, width, pad_width, values
    cdef readonly list packed
    # A one-row chain's large kernels split in column blocks for the worker team, each
    # block's columns contiguous (see _pack_lane), for _lane_threads threads.
    cdef object _lane_packs          # threads -> (arrays, table), all kept

    def __init__(self, int rows, kernels, biases, acts, alphas, packed=None, program=None):
        """kernels: float32 (C_l, U_l) C-contiguous; biases: (U_l,) or None; acts:
        activation codes (pynn.backend.api.ACTIVATIONS), none of them softmax but the last
        layer's may be. packed: per layer, None or the ``packed`` array of another chain
        (of several rows) made from the same kernel, shared rather than copied.

        program: None (layer l reads layer l-1's output, C_{l+1} = U_l), or (src, dst, res,
        values) for a residual network's Dense layers and two-input Adds: layer l reads
        value src[l], writes value dst[l] and, where res[l] >= -1, then adds value res[l]
        to it (an Add of the two, after the activation). Values: -1 the input x, -2 the
        output, 0 .. values-1 buffers of the scratch (one row block's each)."""
        if not kernels or rows < 1:
            raise ValueError("DenseChain: needs at least one layer and one row")
        if packed is None:
            packed = [None] * len(kernels)
        elif len(packed) != len(kernels):
            raise ValueError(f"DenseChain: {len(packed)} packed kernels for {len(kernels)} "
                             f"layers")
        arrays, self.packed = [], []
        dims = [kernels[0].shape[0]]   # the input's width, then each layer's output's
        cins = []                      # each layer's input width
        kptr, bptr, panels, pads = [], [], [], []
        n = len(kernels)
        if program is None:
            src = [-1] + [(i - 1) % 2 for i in range(1, n)]
            dst = [i % 2 for i in range(n - 1)] + [-2]
            program = (src, dst, [-3] * n, 2)
        src, dst, res, values = program
        if not (len(src) == len(dst) == len(res) == n) or values < 0:
            raise ValueError(f"DenseChain: a program of {len(src)}, {len(dst)}, {len(res)} "
                             f"steps for {n} layers")
        # Each value's width, as the program's layers write it: reads and adds must fit it.
        width_of = {-1: kernels[0].shape[0]}
        for i in range(n):
            if not (-1 <= src[i] < values and (-2 if i == n - 1 else 0) <= dst[i] < values
                    and (res[i] == -3 or -1 <= res[i] < values)
                    and dst[i] not in (src[i], res[i]) and (dst[i] == -2) == (i == n - 1)):
                raise ValueError(f"DenseChain: step {i} of the program reads {src[i]}, adds "
                                 f"{res[i]} or writes {dst[i]} outside its {values} values")
            k = kernels[i]
            if src[i] not in width_of or k.ndim != 2 or k.shape[0] != width_of[src[i]]:
                raise ValueError(f"DenseChain: kernel of shape {k.shape} does not follow "
                                 f"{width_of.get(src[i])} features")
            if res[i] != -3 and width_of.get(res[i]) != k.shape[1]:
                raise ValueError(f"DenseChain: layer {i} adds a value of "
                                 f"{width_of.get(res[i])} features to its {k.shape[1]}")
            width_of[dst[i]] = k.shape[1]
        for k, b, kp in zip(kernels, biases, packed):
            k = np.ascontiguousarray(k, dtype=np.float32)
            if k.ndim != 2 or k.shape[0] < 1 or k.shape[1] < 1:
                raise ValueError(f"DenseChain: kernel of shape {k.shape} is empty")
            dims.append(k.shape[1])
            cins.append(k.shape[0])
            arrays.append(k)
            kptr.append(k.ctypes.data)
            # Several rows: the rows product reads a copy of the kernel packed in panels of
            # _PANEL_COLS columns, each panel's rows contiguous. Read in place, every row of
            # a column block is a cache line 4 * U bytes from the last, which the hardware
            # prefetcher follows badly once the kernel has left the cache: the MLP
            # 784-256-128-10 at 64 rows, one thread (Intel Xeon, medians), 244 -> 230 us
            # with the kernels in cache, 470 -> 400 after a 64 MiB pass evicted them, 330 ->
            # 290 after a 2 ms sleep. A width that is not whole vectors would end in the
            # microkernel's scalar column loop, one dependent FMA chain per output (a 128 ->
            # 10 layer at 64 rows: 61 us, 3 GFLOP/s), so the copy is also zero-padded to 16
            # columns (whole vectors at every level). Each output keeps its sum (one FMA per
            # term, in order, from zero), so the bits are the unpacked product's.
            up = -(-k.shape[1] // _PAD_COLS) * _PAD_COLS
            if rows > 1:
                if kp is None:
                    padded = np.zeros((k.shape[0], up), np.float32)
                    padded[:, :k.shape[1]] = k
                    kp = aligned_empty(k.shape[0] * up, np.float32)
                    np.concatenate([padded[:, p0:p0 + _PANEL_COLS].ravel()
                                    for p0 in range(0, up, _PANEL_COLS)], out=kp)
                elif (type(kp) is not np.ndarray or kp.dtype != np.float32 or kp.ndim != 1
                      or kp.shape[0] != k.shape[0] * up or not kp.flags.c_contiguous):
                    raise ValueError(f"DenseChain: a packed kernel for {k.shape} must be "
                                     f"float32 ({k.shape[0] * up},), C-contiguous")
                arrays.append(kp)
                panels.append(kp.ctypes.data)
            else:
                up = k.shape[1]
                panels.append(k.ctypes.data)
                kp = None
            self.packed.append(kp)
            pads.append(up)
            if b is None:
                bptr.append(0)
            else:
                b = np.ascontiguousarray(b, dtype=np.float32)
                if b.shape != (k.shape[1],):
                    raise ValueError(f"DenseChain: bias of shape {b.shape} for {k.shape[1]} "
                                     f"units")
                arrays.append(b)
                bptr.append(b.ctypes.data)
        self._arrays = arrays
        self._kernels = np.array(kptr, dtype=np.intp)
        self._biases = np.array(bptr, dtype=np.intp)
        self._dims = np.array(dims, dtype=np.intc)
        self._cins = np.array(cins, dtype=np.intc)
        self._acts = np.array(acts, dtype=np.intc)
        self._alphas = np.array(alphas, dtype=np.float32)
        self._panels = np.array(panels, dtype=np.intp)
        self._pads = np.array(pads, dtype=np.intc)
        self._src = np.array(src, dtype=np.intc)
        self._dst = np.array(dst, dtype=np.intc)
        self._res = np.array(res, dtype=np.intc)
        self._skip = np.array([int(i > 0 and acts[i - 1] == ACT_RELU and src[i] == dst[i - 1]
                                   and bool(np.isfinite(kernels[i]).all()))
                               for i in range(n)], dtype=np.intc)
        self.values = values
        self.rows = rows
        self.layers = len(kernels)
        self._lane_packs = {}
        self.width = max(dims[1:])
        self.pad_width = max([p for p, d in zip(pads, dims[1:]) if p != d], default=0)

    def skip_input_zeros(self):
        """The chain's input has zeros (a relu's output, pooled or flattened: the small
        CNN's Dense after its convolutions; an image's background; one-hot features): a
        one-row first layer skips their kernel rows (with a finite kernel). Its answers
        stay its own, to the sign of an exact zero."""
        kernel = np.asarray(self._arrays[self._kernel_index(0)])
        self._skip[0] = int(bool(np.isfinite(kernel).all()))

    @property
    def skips(self):
        """Per layer, whether a one-row GEMV skips its input's zero rows."""
        return [bool(v) for v in self._skip]

    cdef const Py_ssize_t* _lane(self, int threads):
        """The split kernels for `threads` threads (under the GIL, before a call's nogil
        part): a table of 2 x layers entries, each layer's split kernel's address (0: not
        split), then each one's block width. A layer of LANE_SPLIT_MIN_MACS or more splits
        its U columns in `threads` blocks of whole vectors, block b's C x width columns
        stored contiguously: read in place, each thread would stream every other stretch of
        each kernel row, and the hardware prefetcher, running on across the stretches'
        ends, pulled the other threads' columns into its L2 too (the small CNN's 4096 x 128
        Dense at two threads: 36 us of a 100 us call, 3.7 us packed). A kernel over
        LANE_PACK_MAX_BYTES, which no core's L2 keeps anyway, is split in place (a negative
        width) rather than copied. Packs made for other counts are kept: a call still
        running on one may be reading it."""
        cdef int i, c, u, cols
        cdef cnp.ndarray table
        pack = self._lane_packs.get(threads)
        if pack is None:
            arrays, ptrs, widths = [], [], []
            for i in range(self.layers):
                c, u = self._cins[i], self._dims[i + 1]
                if self.rows != 1 or <Py_ssize_t>c * u < LANE_SPLIT_MIN_MACS:
                    ptrs.append(0)
                    widths.append(0)
                    continue
                cols = (u + threads * 16 - 1) // (threads * 16) * 16
                if <Py_ssize_t>c * u * sizeof(float) > LANE_PACK_MAX_BYTES:
                    ptrs.append(self._kernels[i])
                    widths.append(-cols)
                    continue
                k = np.asarray(self._arrays[self._kernel_index(i)])
                blocks = np.concatenate([k[:, j0:j0 + cols].ravel()
                                         for j0 in range(0, u, cols)])
                arrays.append(blocks)
                ptrs.append(blocks.ctypes.data)
                widths.append(cols)
            pack = self._lane_packs[threads] = (arrays, np.array(ptrs + widths, dtype=np.intp))
        table = <cnp.ndarray>pack[1]
        return <const Py_ssize_t*>cnp.PyArray_DATA(table)

    cdef int _kernel_index(self, int i):
        """Layer i's kernel's index in self._arrays (kernel, [packed], [bias] per layer)."""
        cdef int j, at = 0
        for j in range(i):
            at += 1 + (self.packed[j] is not None) + (self._biases[j] != 0)
        return at

    cdef inline Py_ssize_t _block_rows(self, int blocks) noexcept nogil:
        return (self.rows + blocks - 1) // blocks

    cdef inline Py_ssize_t _block_scratch(self, int blocks) noexcept nogil:
        cdef Py_ssize_t per = self._block_rows(blocks)
        return self.values * per * self.width + per * self.pad_width

    def scratch(self, int blocks=1):
        """A buffer for the intermediates of ``run`` with up to `blocks` row blocks (each:
        the program's values, each as wide as the widest layer's output, and one padded
        product)."""
        blocks = max(1, min(blocks, self.rows))
        return np.empty(blocks * self._block_scratch(blocks), dtype=np.float32)

    def run(self, const float[:, ::1] x, float[::1] scratch, float[:, ::1] out,
            int blocks=1):
        """out (N, U_last) = the chain on x (N, C0); scratch from ``scratch(b)``, b >=
        blocks. blocks > 1: the rows in that many blocks, each run by one thread of pynn's
        worker team through every layer (no barrier between the layers: a row needs only its
        own row before it). Each row's sums do not depend on the other rows, so the bits do
        not depend on the blocks."""
        cdef int n = self.rows
        blocks = max(1, min(blocks, n))
        if (x.shape[0] != n or x.shape[1] != self._dims[0] or out.shape[0] != n
                or out.shape[1] != self._dims[self.layers]
                or scratch.shape[0] < blocks * self._block_scratch(blocks)):
            raise ValueError(f"DenseChain.run: x {(x.shape[0], x.shape[1])} and out "
                             f"{(out.shape[0], out.shape[1])} do not fit the chain "
                             f"({n}, {self._dims[0]}) -> ({n}, {self._dims[self.layers]}), "
                             f"or the scratch is short for {blocks} blocks")
        if blocks == 1:
            with nogil:
                self._forward(&x[0, 0], &scratch[0], &out[0, 0], n, False, 1, NULL)
            return
        cdef _ChainJob job
        job.chain, job.x, job.scratch, job.out = <void*>self, &x[0, 0], &scratch[0], &out[0, 0]
        job.n, job.per, job.stride = n, self._block_rows(blocks), self._block_scratch(blocks)
        job.ldx, job.ldo = x.shape[1], out.shape[1]
        with nogil:
            # the row blocks on pynn's worker team (native/_team.h)
            pynn_team_for(blocks, 1, blocks, _chain_blocks_job, &job)

    def predict_one(self, x):
        """The chain on one sample: a fresh (1, U_last) float32 array for x, a C-contiguous,
        aligned, native-order float32 ndarray of shape (1, C0); None for anything else (the
        caller then takes its checked route). The whole batch-1 call of an MLP plan: no
        memoryview, no buffer lookup, no OpenMP region, the GIL released for the arithmetic."""
        cdef cnp.ndarray a, out
        cdef cnp.npy_intp dims[2]
        cdef float stack[STACK_SCRATCH]
        cdef float* scratch
        cdef const float* src
        cdef float* dst
        cdef PyThreadState* gil
        cdef int threads
        cdef const Py_ssize_t* lane
        if type(x) is not np.ndarray or self.rows != 1:
            return None
        a = <cnp.ndarray>x
        if (cnp.PyArray_NDIM(a) != 2 or cnp.PyArray_DIM(a, 0) != 1
                or cnp.PyArray_DIM(a, 1) != self._dims[0]
                or cnp.PyArray_TYPE(a) != cnp.NPY_FLOAT32
                or not cnp.PyArray_ISCARRAY_RO(a) or not cnp.PyArray_ISNOTSWAPPED(a)):
            return None
        dims[0], dims[1] = 1, self._dims[self.layers]
        out = cnp.PyArray_EMPTY(2, dims, cnp.NPY_FLOAT32, 0)
        src, dst = <const float*>cnp.PyArray_DATA(a), <float*>cnp.PyArray_DATA(out)
        threads = pynn_team_lane_threads()
        lane = self._lane(threads) if threads > 1 else NULL
        if self.values * self.width <= STACK_SCRATCH:
            gil = pynn_gil_release()  # handed on between lane threads (_gil.h)
            self._forward(src, stack, dst, 1, False, threads, lane)
            pynn_team_lane_done()
            pynn_gil_acquire(gil)
            return out
        scratch = <float*>malloc(max(self.values, 1) * self.width * sizeof(float))
        if scratch == NULL:
            raise MemoryError("DenseChain: no memory for one sample's intermediates")
        gil = pynn_gil_release()
        self._forward(src, scratch, dst, 1, False, threads, lane)
        pynn_team_lane_done()
        pynn_gil_acquire(gil)
        free(scratch)
        return out

    cdef void _forward(self, const float* src, float* scratch, float* out, int n,
                       bint in_region, int threads,
                       const Py_ssize_t* lane) noexcept nogil:
        """n rows (C0 apart) from src through every layer into out; in_region: inside a
        parallel region already (the epilogue then row by row, no nested team). threads: a
        one-row chain's large layers split their columns over that many threads of pynn's
        worker team (each y[j] is summed alike wherever it runs: the same bits), reading the
        split kernels of lane = _lane(threads)."""
        cdef int i, c, u, up, r, p0, w, j
        cdef int idx[_SKIP_MAX]
        cdef _GemvColsJob cols
        cdef const float* x = src
        cdef float* dst
        cdef float* wide
        cdef const float* bias
        cdef const float* add
        for i in range(self.layers):
            c, u = self._cins[i], self._dims[i + 1]
            src = self._value(self._src[i], x, scratch, out, n)
            dst = self._value(self._dst[i], x, scratch, out, n)
            if self.rows == 1:  # _gemv.h: BLAS would pack the whole kernel first
                # (only for a one-row chain: a one-row block of a larger one keeps the rows
                # product, whose bits equal the GEMV's at the FMA levels only)
                if threads > 1 and lane != NULL and lane[i] != 0:
                    cols.x, cols.k, cols.y = src, <const float*>lane[i], dst
                    cols.c, cols.u = c, u
                    cols.packed = lane[self.layers + i] > 0
                    cols.skip = self._skip[i] != 0
                    cols.cols = (lane[self.layers + i] if cols.packed
                                 else -lane[self.layers + i])
                    # block b first offered to team slot b (the caller's: block 0)
                    pynn_team_for_affine((u + cols.cols - 1) // cols.cols, threads,
                                         _gemv_cols_job, &cols)
                elif self._skip[i]:
                    pynn_gemv_skip_f(c, u, src, <const float*>self._kernels[i], u, dst, idx)
                else:
                    pynn_gemv_f(c, u, src, <const float*>self._kernels[i], u, dst)
            elif n <= PYNN_GEMV_ROWS_MAX and pynn_mk_level() > 0:
                # a few rows: the kernel streamed once as the GEMV reads it (_gemv.h), the
                # rows product's bits at the FMA levels (the generic level keeps the rows
                # product: a block of a few rows must sum as the whole batch would)
                pynn_gemv_rows_f(n, c, u, src, c, <const float*>self._kernels[i], u, dst, u)
            else:
                up = self._pads[i]
                wide = dst if up == u else &scratch[self.values * n * self.width]
                p0 = 0
                while p0 < up:
                    w = up - p0 if up - p0 < _PANEL_COLS else _PANEL_COLS
                    pynn_rows_gemm_f(n, w, c, src, c, 1,
                                     <const float*>self._panels[i] + p0 * c, w,
                                     wide + p0, up, 0)
                    p0 += w
                if up != u:
                    for r in range(n):
                        memcpy(&dst[r * u], &wide[r * up], u * sizeof(float))
            bias = <const float*>self._biases[i]
            if n == 1:
                bias_activation_row(dst, bias, u, self._acts[i], self._alphas[i])
            elif in_region:
                for r in range(n):
                    bias_activation_row(&dst[r * u], bias, u, self._acts[i], self._alphas[i])
            else:
                bias_activation_rows(dst, dst, bias, n, u, self._acts[i], self._alphas[i])
            if self._res[i] != -3:  # an Add of this layer's output and an earlier value
                add = self._value(self._res[i], x, scratch, out, n)
                for j in range(n * u):
                    dst[j] = dst[j] + add[j]

    cdef inline float* _value(self, int v, const float* x, float* scratch, float* out,
                              int n) noexcept nogil:
        """The rows of value v (see __init__) for a block of n rows."""
        if v == -1:
            return <float*>x
        if v == -2:
            return out
        return &scratch[v * n * self.width]


cdef inline void bias_activation_row(float* z, const float* bias, Py_ssize_t cols, int act,
                                     float alpha) noexcept nogil:
    """bias_activation_rows's arithmetic on one row, in place, outside any OpenMP region:
    its `parallel if (false)` still forms a team of one, about 0.5 us a layer at batch 1."""
    cdef Py_ssize_t j
    cdef float v
    if bias != NULL and act == ACT_RELU:
        for j in range(cols):
            v = z[j] + bias[j]
            z[j] = 0 if v < 0 else v
        return
    if bias != NULL:
        for j in range(cols):
            z[j] = z[j] + bias[j]
    if act == ACT_SOFTMAX:
        softmax_row(z, z, cols)
    else:
        act_forward_vec(z, z, cols, act, alpha)


# -- Embedding then GlobalAveragePooling1D ---------------------------------------------------

ctypedef struct _EmbeddingMeanJob:
    const int* ids
    const float* table
    float* out
    double* acc
    int* bad            # per row: its ids outside [0, V)
    Py_ssize_t T, V, D


cdef void _embedding_mean_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    """Rows [begin, end): each row's float64 sums in t order, then times 1/T."""
    cdef _EmbeddingMeanJob* j = <_EmbeddingMeanJob*>ctx
    cdef Py_ssize_t n, t, c, T = j.T, D = j.D
    cdef int k
    cdef double inv = 1.0 / T
    cdef double* a
    cdef const float* row
    for n in range(begin, end):
        a = j.acc + n * D
        for c in range(D):
            a[c] = 0
        for t in range(T):
            k = j.ids[n * T + t]
            if k < 0 or k >= j.V:
                j.bad[n] += 1
                for c in range(D):
                    a[c] = NAN
                continue
            row = j.table + k * D
            for c in range(D):
                a[c] += row[c]
        for c in range(D):
            j.out[n * D + c] = <float>(a[c] * inv)


def embedding_mean(const int[:, ::1] indices, const float[:, ::1] table, float[:, ::1] out):
    """out[n] = the mean over t of table[indices[n, t]]: an Embedding whose (N, T, D)
    output only a GlobalAveragePooling1D reads, without that output. Sums in float64 in t
    order, then times 1/T, as the pooling does (native/pool.pyx): its bits. indices must be
    in [0, V) (the Embedding's operands check them first); a row holding one that is not
    is left as NaN and counted, and the count raises, since it would read outside the
    table. Rows go to pynn's worker team from POOL_PARALLEL_MIN gathered values on."""
    cdef Py_ssize_t N = indices.shape[0], T = indices.shape[1], V = table.shape[0]
    cdef Py_ssize_t D = table.shape[1]
    if out.shape[0] != N or out.shape[1] != D or T < 1:
        raise ValueError(f"embedding_mean: indices ({N}, {T}), table ({V}, {D}) and out "
                         f"({out.shape[0]}, {out.shape[1]}) do not fit")
    if N == 0 or D == 0:
        return
    acc = np.empty((N, D), dtype=np.float64)
    bad = np.zeros(N, dtype=np.intc)
    cdef double[:, ::1] a = acc
    cdef int[::1] b = bad
    cdef _EmbeddingMeanJob job
    cdef int threads = omp_get_max_threads() if N * T * D >= POOL_PARALLEL_MIN else 1
    job.ids, job.table, job.out = &indices[0, 0], &table[0, 0], &out[0, 0]
    job.acc, job.bad, job.T, job.V, job.D = &a[0, 0], &b[0], T, V, D
    with nogil:
        # rows on pynn's worker team (native/_team.h)
        pynn_team_for(N, team_grain(N, threads), threads, _embedding_mean_job, &job)
    if bad.any():
        raise ValueError(f"embedding_mean: {int(bad.sum())} indices outside [0, {V})")


cdef inline Py_ssize_t _token_id(const void* ids, int kind, Py_ssize_t i,
                                 Py_ssize_t V) noexcept nogil:
    """Id i of int32, int64 or float32 ids as an integer; -1 for a float that is not a whole
    number in [0, V)."""
    cdef float f
    if kind == cnp.NPY_INT32:
        return (<const int*>ids)[i]
    if kind == cnp.NPY_INT64:
        return <Py_ssize_t>(<const long long*>ids)[i]
    f = (<const float*>ids)[i]
    if not (f >= 0 and f < V) or f != <float><Py_ssize_t>f:
        return -1
    return <Py_ssize_t>f


cdef int _ids_type(x, Py_ssize_t rows, Py_ssize_t steps):
    """x's NumPy type number when x is token ids these entry points take as they come: a
    C-contiguous native-order (N, T) array of int32, int64 or float32 with T >= 1, N == rows
    and T == steps (-1: any); else -1. (_token_id checks the values.)"""
    cdef cnp.ndarray a
    cdef int kind
    if type(x) is not np.ndarray:
        return -1
    a = <cnp.ndarray>x
    kind = cnp.PyArray_TYPE(a)
    if (cnp.PyArray_NDIM(a) != 2 or kind not in (cnp.NPY_INT32, cnp.NPY_INT64, cnp.NPY_FLOAT32)
            or not cnp.PyArray_ISCARRAY_RO(a) or not cnp.PyArray_ISNOTSWAPPED(a)
            or cnp.PyArray_DIM(a, 1) < 1 or (rows >= 0 and cnp.PyArray_DIM(a, 0) != rows)
            or (steps >= 0 and cnp.PyArray_DIM(a, 1) != steps)):
        return -1
    return kind


cdef Py_ssize_t _id_list(const void* src, int kind, Py_ssize_t n, Py_ssize_t V,
                         int* out) noexcept nogil:
    """out[i] = id i of the ids at src (NumPy type number kind) as an int; the number of
    nonzero ids, or -1 (out partly written) at one that is not a whole number in [0, V)."""
    cdef Py_ssize_t i, k, nonzero = 0
    for i in range(n):
        k = _token_id(src, kind, i, V)
        if k < 0 or k >= V:
            return -1
        out[i] = <int>k
        nonzero += k != 0
    return nonzero


def embedding_mean_ids(x, const float[:, ::1] table, float[:, ::1] out):
    """embedding_mean for ids x as they come (N, T) C-contiguous int32, int64 or float32
    holding whole numbers in [0, V), checked here in C: True when done; False, with nothing
    written, for anything else (the caller's NumPy check then names the bad id). The
    Embedding's own operand check spent more than the gather on the text model's batch."""
    cdef cnp.ndarray a
    cdef int kind = _ids_type(x, out.shape[0], -1)
    cdef Py_ssize_t n, V = table.shape[0]
    cdef bint ok = True
    if kind < 0:
        return False
    a = <cnp.ndarray>x
    n = cnp.PyArray_SIZE(a)
    ids = np.empty((cnp.PyArray_DIM(a, 0), cnp.PyArray_DIM(a, 1)), dtype=np.intc)
    cdef int[:, ::1] view = ids
    cdef int* dst = &view[0, 0] if n else NULL
    cdef const void* src = cnp.PyArray_DATA(a)
    with nogil:
        ok = _id_list(src, kind, n, V, dst) >= 0
    if not ok:
        return False
    embedding_mean(ids, table, out)
    return True


def embedding_rows_ids(x, const float[:, ::1] table not None, float[:, :, ::1] out not None):
    """out[n, t] = table[x[n, t]] (an Embedding's output) for ids x as they come (N, T)
    C-contiguous int32, int64 or float32 holding whole numbers in [0, V), checked here in C
    as embedding_mean_ids does: True when done; False, with out left unspecified, for
    anything else (the caller's own op then names the bad id). The op's operand checks and
    conversions took ~7 us of a batch-1 text model's call."""
    cdef int kind = _ids_type(x, out.shape[0], out.shape[1])
    cdef Py_ssize_t i, n, V = table.shape[0], D = table.shape[1]
    cdef bint ok
    if kind < 0 or out.shape[2] != D:
        return False
    n = cnp.PyArray_SIZE(<cnp.ndarray>x)
    if n == 0 or D == 0:
        return True
    cdef int[::1] ids = np.empty(n, dtype=np.intc)
    cdef const void* src = cnp.PyArray_DATA(<cnp.ndarray>x)
    cdef const float* rows = &table[0, 0]
    cdef float* dst = &out[0, 0, 0]
    with nogil:
        ok = _id_list(src, kind, n, V, &ids[0]) >= 0
        if ok:
            for i in range(n):
                memcpy(dst + i * D, rows + ids[i] * D, D * sizeof(float))
    return ok


def embedding_kept_rows(x, const float[:, ::1] table not None):
    """The rows of one sample's nonzero ids, in order: (1, K, D) float32, a fresh array; the
    input of a recurrent layer reading an Embedding(mask_zero=True) once its masked steps
    (the zero ids) are dropped (pynn.layers.recurrent.unmasked_steps). None for ids it does
    not take (as embedding_rows_ids; the plan's own steps then word the error) or for no
    nonzero id."""
    cdef cnp.ndarray rows
    cdef int kind = _ids_type(x, 1, -1)
    cdef Py_ssize_t i, n, kept, V = table.shape[0], D = table.shape[1]
    cdef cnp.npy_intp dims[3]
    if kind < 0 or D == 0:
        return None
    n = cnp.PyArray_SIZE(<cnp.ndarray>x)
    cdef int[::1] ids = np.empty(n, dtype=np.intc)
    cdef const void* src = cnp.PyArray_DATA(<cnp.ndarray>x)
    with nogil:
        kept = _id_list(src, kind, n, V, &ids[0])
    if kept <= 0:
        return None
    dims[0], dims[1], dims[2] = 1, kept, D
    rows = cnp.PyArray_EMPTY(3, dims, cnp.NPY_FLOAT32, 0)
    cdef float* dst = <float*>cnp.PyArray_DATA(rows)
    cdef const float* table_rows = &table[0, 0]
    with nogil:
        for i in range(n):
            if ids[i] != 0:
                memcpy(dst, table_rows + ids[i] * D, D * sizeof(float))
                dst += D
    return rows


def kept_rows_mean(const float[:, :, ::1] rows not None, float weight):
    """(1, D) float32: sum over t in order of (double) weight * rows[0, t] in float64, then
    rounded once: a masked GlobalAveragePooling1D's numbers on one sample whose kept steps
    are these rows and weight = float32(1 / K) (its batch dot, native/merge.pyx _dot_items,
    adds the masked steps' zero terms, which change no sum)."""
    cdef Py_ssize_t t, d, K = rows.shape[1], D = rows.shape[2]
    cdef cnp.npy_intp dims[2]
    if rows.shape[0] != 1:
        raise ValueError(f"kept_rows_mean: one sample's rows, got {rows.shape[0]}")
    dims[0], dims[1] = 1, D
    out = cnp.PyArray_EMPTY(2, dims, cnp.NPY_FLOAT32, 0)
    cdef float* y = <float*>cnp.PyArray_DATA(out)
    cdef double acc
    with nogil:
        for d in range(D):
            acc = 0
            for t in range(K):
                acc = acc + <double>weight * rows[0, t, d]
            y[d] = <float>acc
    return out


cdef class EmbeddingMeanChain:
    """A plan that is an Embedding whose output only a GlobalAveragePooling1D reads
    (embedding_mean), then a DenseChain: the whole call as one native call (the bench's
    text model). predict_one takes ids of shape (rows, T) as int32, int64 or float32
    holding whole numbers in [0, V); anything else returns None and takes the checked route,
    which words the error. The mean's bits are embedding_mean's, the chain's its own (one
    row block: a serial plan's)."""

    cdef object _table_array
    cdef const float* _table
    cdef readonly DenseChain chain
    cdef Py_ssize_t V, D, T

    def __init__(self, table, Py_ssize_t steps, DenseChain chain):
        table = np.ascontiguousarray(table, dtype=np.float32)
        if (table.ndim != 2 or steps < 1
                or chain._dims[0] != table.shape[1] or table.shape[1] > STACK_SCRATCH):
            raise ValueError(f"EmbeddingMeanChain: a table {table.shape}, {steps} steps and a "
                             f"chain of {chain.rows} rows from {chain._dims[0]} features "
                             f"do not fit")
        self._table_array = table
        self._table = <const float*><Py_ssize_t>table.ctypes.data
        self.V, self.D, self.T = table.shape[0], table.shape[1], steps
        self.chain = chain

    def predict_one(self, x):
        cdef cnp.ndarray a, out
        cdef cnp.npy_intp dims[2]
        cdef float mean[STACK_SCRATCH]
        cdef float stack[STACK_SCRATCH]
        cdef int kind, threads
        cdef const Py_ssize_t* lane
        cdef PyThreadState* gil
        if self.chain.rows != 1:
            return self._predict_rows(x)
        kind = _ids_type(x, 1, self.T)
        if kind < 0 or self.chain.values * self.chain.width > STACK_SCRATCH:
            return None
        a = <cnp.ndarray>x
        if not self._mean(cnp.PyArray_DATA(a), kind, mean):
            return None  # an id out of range or not whole: the checked route names it
        dims[0], dims[1] = 1, self.chain._dims[self.chain.layers]
        out = cnp.PyArray_EMPTY(2, dims, cnp.NPY_FLOAT32, 0)
        threads = pynn_team_lane_threads()
        lane = self.chain._lane(threads) if threads > 1 else NULL
        gil = pynn_gil_release()  # handed on between lane threads (_gil.h)
        self.chain._forward(mean, stack, <float*>cnp.PyArray_DATA(out), 1, False, threads,
                            lane)
        pynn_team_lane_done()
        pynn_gil_acquire(gil)
        return out

    cdef object _predict_rows(self, x):
        """predict_one for a chain of several rows: the means into a row block, then the
        chain's rows product in one block on this thread (the text model at batch 64, one
        thread, Intel Xeon: 43 -> 11 us a call; the two steps through Python paid the ids'
        checks, two entry points and the plan's bookkeeping)."""
        cdef cnp.ndarray a, out, means, scratch
        cdef cnp.npy_intp dims[2]
        cdef int kind, rows = self.chain.rows
        cdef Py_ssize_t r, row_bytes
        cdef const char* ids
        cdef float* m
        cdef bint ok = True
        kind = _ids_type(x, rows, self.T)
        if kind < 0:
            return None
        a = <cnp.ndarray>x
        ids = <const char*>cnp.PyArray_DATA(a)
        row_bytes = self.T * cnp.PyArray_ITEMSIZE(a)
        dims[0], dims[1] = rows, self.D
        means = cnp.PyArray_EMPTY(2, dims, cnp.NPY_FLOAT32, 0)
        m = <float*>cnp.PyArray_DATA(means)
        dims[1] = self.chain._dims[self.chain.layers]
        out = cnp.PyArray_EMPTY(2, dims, cnp.NPY_FLOAT32, 0)
        scratch = self.chain.scratch(1)
        with nogil:
            for r in range(rows):
                if not self._mean(ids + r * row_bytes, kind, m + r * self.D):
                    ok = False
                    break
            if ok:
                self.chain._forward(m, <float*>cnp.PyArray_DATA(scratch),
                                    <float*>cnp.PyArray_DATA(out), rows, False, 1, NULL)
        return out if ok else None

    cdef bint _mean(self, const void* ids, int kind, float* mean) noexcept nogil:
        """mean = the rows of the ids averaged as embedding_mean does (float64 sums in t
        order, times 1/T); False, and mean untouched, when an id is not a whole number in
        [0, V). Each id read once, checked as it is used (float32 ids checked in a pass of
        their own, then again to gather, cost the text model 8 us at batch 64)."""
        cdef Py_ssize_t t, c, k
        cdef double acc[STACK_SCRATCH]
        cdef double inv = 1.0 / self.T
        cdef const float* row
        for c in range(self.D):
            acc[c] = 0
        for t in range(self.T):
            k = _token_id(ids, kind, t, self.V)
            if k < 0 or k >= self.V:
                return False
            row = self._table + k * self.D
            for c in range(self.D):
                acc[c] += row[c]
        for c in range(self.D):
            mean[c] = <float>(acc[c] * inv)
        return True


# -- max pooling without argmax -----------------------------------------------------------------
ctypedef struct _PoolRowsJob:
    void* pool          # the MaxPool2D, borrowed for the call
    const float* x
    float* y


cdef void _pool_rows_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _PoolRowsJob* j = <_PoolRowsJob*>ctx
    cdef long r
    for r in range(begin, end):
        (<MaxPool2D>j.pool)._row(j.x, j.y, r)


# A lane step's parts [b0, b1) (a pooling's output rows, a convolution's pixel blocks) of x
# into y, on the step object.
ctypedef void (*_PartsFn)(void* step, const float* x, float* y, Py_ssize_t b0,
                          Py_ssize_t b1) noexcept nogil

ctypedef struct _RunsJob:
    void* step          # borrowed for the call
    _PartsFn parts
    const float* x
    float* y
    Py_ssize_t count, runs


cdef void _runs_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    """Runs [begin, end) of a step's `count` parts split in j.runs equal runs."""
    cdef _RunsJob* j = <_RunsJob*>ctx
    cdef long i
    for i in range(begin, end):
        j.parts(j.step, j.x, j.y, i * j.count // j.runs, (i + 1) * j.count // j.runs)


cdef void _split_runs(void* step, _PartsFn parts, const float* x, float* y,
                      Py_ssize_t count, int threads) noexcept nogil:
    """A lane step's `count` parts in min(threads, count) equal runs, run i first offered to
    team slot i (the same share on the same core call after call), alone while the team's
    workers sleep (see pynn_team_lane_threads_impl in _team.h)."""
    cdef _RunsJob job
    job.step, job.parts, job.x, job.y = step, parts, x, y
    job.count, job.runs = count, min(<Py_ssize_t>threads, count)
    pynn_team_for_affine(job.runs, threads, _runs_job, &job)


cdef void _pool_rows(void* step, const float* x, float* y, Py_ssize_t b0,
                     Py_ssize_t b1) noexcept nogil:
    cdef Py_ssize_t r
    for r in range(b0, b1):
        (<MaxPool2D>step)._row(x, y, r)


cdef void _conv_pixels(void* step, const float* x, float* y, Py_ssize_t b0,
                       Py_ssize_t b1) noexcept nogil:
    (<Conv2DDirect>step)._pixels(x, y, b0, b1)


from _maxpool cimport pynn_infer_max_f


cdef class MaxPool2D:
    """MaxPooling2D's forward for one plan signature: NHWC float32 x (N, H, W, C) -> y
    (N, HO, WO, C), windows clipped to the input (padding is never read), the geometry
    resolved once. maxpool2d_forward also writes the argmax for backward and reads its
    geometry from a dict per call: at batch 1 on the small CNN's 32x32x32 that was 10 us
    of a 2 us pass. Output rows go to the OpenMP threads from POOL_PARALLEL_MIN input values
    on (a serial plan runs it with one)."""

    cdef readonly Py_ssize_t N, H, W, C, PH, PW, SH, SW, PT, PL, HO, WO

    def __init__(self, g):
        """g: the geometry pynn.backend.operands.pool.maxpool2d_forward returns."""
        self.N, self.H, self.W, self.C = g["N"], g["H"], g["W"], g["C"]
        self.PH, self.PW, self.SH, self.SW = g["PH"], g["PW"], g["SH"], g["SW"]
        self.PT, self.PL, self.HO, self.WO = g["PT"], g["PL"], g["HO"], g["WO"]
        if min(self.N, self.H, self.W, self.C, self.HO, self.WO) < 1:
            raise ValueError("MaxPool2D: empty geometry (the plan keeps the public op)")

    def run(self, const float[:, :, :, ::1] x, float[:, :, :, ::1] y):
        if (x.shape[0] != self.N or x.shape[1] != self.H or x.shape[2] != self.W
                or x.shape[3] != self.C or y.shape[0] != self.N or y.shape[1] != self.HO
                or y.shape[2] != self.WO or y.shape[3] != self.C):
            raise ValueError(f"MaxPool2D.run: x {[x.shape[i] for i in range(4)]} and y "
                             f"{[y.shape[i] for i in range(4)]} do not fit ({self.N}, {self.H}, "
                             f"{self.W}, {self.C}) -> ({self.N}, {self.HO}, {self.WO}, "
                             f"{self.C})")
        with nogil:
            self._forward(&x[0, 0, 0, 0], &y[0, 0, 0, 0], True)

    cdef void _forward(self, const float* x, float* y, bint parallel) noexcept nogil:
        # Output rows split over the threads of a multi-thread plan (a serial plan runs with
        # one): at batch 64 of 32x32x32 this pass took 242 us on one thread where
        # maxpool2d_forward, which also writes the argmax, took 540. Not parallel: no team
        # at all (Program, the batch-1 lane, which runs outside the plan's one-thread
        # setting: the small CNN's first pooling, 32768 values, formed a two-thread team
        # per call, 143 -> 230 us a prediction with two threads set).
        cdef Py_ssize_t r
        if not parallel:
            for r in range(self.N * self.HO):
                self._row(x, y, r)
            return
        cdef _PoolRowsJob job
        cdef int threads = (omp_get_max_threads()
                            if self.N * self.H * self.W * self.C >= POOL_PARALLEL_MIN else 1)
        job.pool, job.x, job.y = <void*>self, x, y
        # rows on pynn's worker team (native/_team.h)
        pynn_team_for(self.N * self.HO, team_grain(self.N * self.HO, threads), threads,
                      _pool_rows_job, &job)

    cdef void _forward_lane(self, const float* x, float* y, int threads) noexcept nogil:
        """A batch-1 lane's pooling: threads > 1 splits the output rows in `threads`
        runs, run i first offered to team slot i, which made the rows of the convolution's
        output that this run reads (Conv2DDirect._forward splits its pixels alike): read
        from the other core's cache, the small CNN's first pooling took 13 us at two
        threads against 4.4 on one."""
        cdef Py_ssize_t r, rows = self.N * self.HO
        if (threads <= 1 or rows < 2
                or self.N * self.H * self.W * self.C < LANE_SPLIT_MIN_VALUES):
            for r in range(rows):
                self._row(x, y, r)
            return
        _split_runs(<void*>self, _pool_rows, x, y, rows, threads)

    cdef void _row(self, const float* x, float* y, Py_ssize_t r) noexcept nogil:
        cdef Py_ssize_t n = r // self.HO, ho = r % self.HO, wo, w0, w1, C = self.C
        cdef Py_ssize_t h0 = max(ho * self.SH - self.PT, 0)
        cdef Py_ssize_t h1 = min(ho * self.SH - self.PT + self.PH, self.H)
        for wo in range(self.WO):
            w0 = max(wo * self.SW - self.PL, 0)
            w1 = min(wo * self.SW - self.PL + self.PW, self.W)
            pynn_infer_max_f(x + ((n * self.H + h0) * self.W + w0) * C, self.W * C,
                             h1 - h0, w1 - w0, y + (r * self.WO + wo) * C, C)


# -- direct convolution of a one-thread plan --------------------------------------------------

cdef class Conv2DDirect:
    """conv.pyx's direct Conv2D forward (_forward_direct: the microkernel reads the
    zero-padded input through per-pixel offsets, panel by panel of the packed kernel) for
    one plan signature on one thread, with everything that does not depend on x made once:
    the packed kernel panels (packed per call there), every output pixel's window offset
    (two integer divisions per pixel per call there: a quarter of the small CNN's first
    layer at batch 1) and the padded buffer's zero margins (written per call there).
    The same microkernel calls in the same order: conv.pyx's bits (the plan checks).

    Legend: N batch, H/W input, HP/WP padded input, C channels, F filters, K = KH*KW*C."""

    cdef object _arrays
    cdef float* _panels
    cdef const float* _bias
    cdef const Py_ssize_t* _roff
    cdef const Py_ssize_t* _aseg
    cdef Py_ssize_t* _bseg_full
    cdef Py_ssize_t* _bseg_last
    cdef const Py_ssize_t* _bseg
    cdef const float* _kernel
    cdef Py_ssize_t N, H, W, C, HP, WP, PT, PL, F, K, M, nseg, tn, chunk, nc
    cdef int act, level
    cdef float alpha
    cdef readonly bint padded

    def __init__(self, kernel, bias, g, aseg, bseg, Py_ssize_t tn, Py_ssize_t chunk,
                 int act, float alpha):
        """kernel (KH, KW, C, F) and bias (F,) or None: float32, C-contiguous; g: conv.pyx's
        planned geometry; aseg, bseg, tn: conv._kernel_segments(g); act: linear or relu."""
        if act not in (0, ACT_RELU):
            raise ValueError("Conv2DDirect: linear or relu only (other epilogues stay in "
                             "conv.pyx)")
        self.N, self.H, self.W, self.C = g["N"], g["H"], g["W"], g["C"]
        self.HP, self.WP, self.PT, self.PL = g["HP"], g["WP"], g["PT"], g["PL"]
        self.F, self.K = g["F"], g["K"]
        if self.K < 1 or self.F < 1 or chunk < 1 or tn < 1:
            raise ValueError("Conv2DDirect: empty geometry")
        ho, wo = np.arange(g["HO"], dtype=np.intp), np.arange(g["WO"], dtype=np.intp)
        n = np.arange(self.N, dtype=np.intp)
        roff = ((((n[:, None, None] * self.HP + ho[None, :, None] * g["SH"]) * self.WP
                  + wo[None, None, :] * g["SW"]) * self.C).ravel())
        self.M = roff.shape[0]
        kernel = np.ascontiguousarray(kernel, dtype=np.float32)
        aseg = np.ascontiguousarray(aseg, dtype=np.intp)
        bseg = np.ascontiguousarray(bseg, dtype=np.intp)
        panels = np.empty(self.K * self.F, dtype=np.float32)
        bseg_full = np.empty(len(bseg), dtype=np.intp)
        bseg_last = np.empty(len(bseg), dtype=np.intp)
        arrays = [kernel, roff, aseg, bseg, panels, bseg_full, bseg_last]
        if bias is not None:
            bias = np.ascontiguousarray(bias, dtype=np.float32)
            arrays.append(bias)
            self._bias = <const float*><Py_ssize_t>bias.ctypes.data
        else:
            self._bias = NULL
        self._arrays = arrays
        self._kernel = <const float*><Py_ssize_t>kernel.ctypes.data
        self._roff = <const Py_ssize_t*><Py_ssize_t>roff.ctypes.data
        self._aseg = <const Py_ssize_t*><Py_ssize_t>aseg.ctypes.data
        self._bseg = <const Py_ssize_t*><Py_ssize_t>bseg.ctypes.data
        self._panels = <float*><Py_ssize_t>panels.ctypes.data
        self._bseg_full = <Py_ssize_t*><Py_ssize_t>bseg_full.ctypes.data
        self._bseg_last = <Py_ssize_t*><Py_ssize_t>bseg_last.ctypes.data
        self.nseg, self.tn, self.chunk = len(aseg), tn, chunk
        self.act, self.alpha = act, alpha
        self.padded = not (self.HP == self.H and self.WP == self.W and self.PT == 0
                           and self.PL == 0)
        self.level = -1
        self._pack()

    cdef void _pack(self) noexcept:
        """Panels of the microkernel level in use (set_kernel may change it between calls)."""
        cdef Py_ssize_t s, rows
        self.level = pynn_mk_level()
        self.nc = PYNN_NC_F
        pynn_pack_panels_f(self._kernel, self.F, self.K, self.F, self.nc, self._panels)
        for s in range(self.nseg):
            rows = self._bseg[s] // self.F
            self._bseg_full[s] = rows * self.nc
            self._bseg_last[s] = rows * (self.F - (self.F - 1) // self.nc * self.nc)

    def pad_shape(self):
        """The padded buffer run takes (zeros: run writes only its interior), or None."""
        return (self.N, self.HP, self.WP, self.C) if self.padded else None

    def run(self, const float[:, :, :, ::1] x, float[::1] xp, float[:, :, :, ::1] y):
        """y (N, HO, WO, F) = act(conv(x) + bias); xp: a zeroed buffer of pad_shape() (its
        margins stay zero), unused (may be empty) when nothing is padded."""
        if (x.shape[0] != self.N or x.shape[1] != self.H or x.shape[2] != self.W
                or x.shape[3] != self.C or y.shape[0] * y.shape[1] * y.shape[2] != self.M
                or y.shape[3] != self.F
                or (self.padded and xp.shape[0] != self.N * self.HP * self.WP * self.C)):
            raise ValueError(f"Conv2DDirect.run: x {[x.shape[i] for i in range(4)]}, y "
                             f"{[y.shape[i] for i in range(4)]} do not fit ({self.N}, "
                             f"{self.H}, {self.W}, {self.C}) -> {self.M} pixels x {self.F}")
        if self.level != pynn_mk_level():
            self._pack()
        with nogil:
            self._run(&x[0, 0, 0, 0], &xp[0] if self.padded else NULL, &y[0, 0, 0, 0], 1)

    cdef void _run(self, const float* x, float* xp, float* y, int threads) noexcept nogil:
        """x placed in xp's interior (when padded), then the forward into y."""
        cdef Py_ssize_t r, n, h, rows = self.H - max(self.H + self.PT - self.HP, 0)
        cdef Py_ssize_t cols = min(self.W, self.WP - self.PL)
        if not self.padded:
            self._forward(x, y, threads)
            return
        if cols > 0:
            for r in range(self.N * rows):
                n, h = r // rows, r % rows
                memcpy(xp + ((n * self.HP + h + self.PT) * self.WP + self.PL) * self.C,
                       x + (n * self.H + h) * self.W * self.C, cols * self.C * sizeof(float))
        self._forward(xp, y, threads)

    cdef void _forward(self, const float* xp, float* y, int threads) noexcept nogil:
        """threads > 1: the output's pixel blocks in `threads` runs, run i first offered to
        team slot i (each pixel's sums are the same wherever it runs: the same bits)."""
        cdef Py_ssize_t blocks = (self.M + self.chunk - 1) // self.chunk
        if threads <= 1 or blocks < 2 or self.M * self.K * self.F < LANE_SPLIT_MIN_MACS:
            self._pixels(xp, y, 0, blocks)
            return
        _split_runs(<void*>self, _conv_pixels, xp, y, blocks, threads)

    cdef void _pixels(self, const float* xp, float* y, Py_ssize_t b0,
                      Py_ssize_t b1) noexcept nogil:
        """Output pixel blocks [b0, b1) of `chunk` pixels each."""
        cdef Py_ssize_t p0, rows, q0, wd, s0, ns, j, F = self.F, nc = self.nc
        cdef Py_ssize_t group = max(256 // self.tn, 1)  # conv.pyx's _FORWARD_PANEL_ROWS
        cdef Py_ssize_t p_end = min(b1 * self.chunk, self.M)
        cdef float v
        cdef float* z
        p0 = b0 * self.chunk
        while p0 < p_end:
            rows = min(self.chunk, p_end - p0)
            q0 = 0
            while q0 < F:
                wd = min(nc, F - q0)
                s0 = 0
                while s0 < self.nseg:
                    ns = min(group, self.nseg - s0)
                    pynn_seg_gemm_f(rows, wd, ns, self.tn, xp, self._roff + p0,
                                    self._aseg + s0, 1, self._panels + q0 * self.K,
                                    (self._bseg_full if wd == nc else self._bseg_last) + s0,
                                    wd, y + p0 * F + q0, F,
                                    self._bias + q0 if self._bias != NULL and s0 == 0
                                    else NULL, s0 > 0, False)
                    s0 = s0 + ns
                q0 = q0 + nc
            if self.act == ACT_RELU:  # conv.pyx's _relu_row: NaN and -0.0 pass through
                z = y + p0 * F
                for j in range(rows * F):
                    v = z[j]
                    z[j] = 0 if v < 0 else v
            p0 = p0 + rows



# -- Winograd convolutions (native/_winograd.h, as conv.pyx's forward) ----------------------
from _winograd cimport (pynn_wino_input_f, pynn_wino_output_f, pynn_wino_kernel_f,
    pynn_wino_gemm_f, pynn_wino4_input_f, pynn_wino4_output_f, pynn_wino4_kernel_f)

# A lane's Winograd step splits its tiles in at most this many runs (each run needs its own
# V and M blocks in the calling thread's workspace).
DEF WINO_MAX_RUNS = 4


cdef class Conv2DWinograd:
    """conv.pyx's Winograd forward (_forward_winograd_job: F(2x2, 3x3) or F(4x4, 3x3); the
    input transform reading x in place, (m+2)^2 GEMMs on the microkernel, the output
    transform with the bias, then relu) for one plan signature, with the kernel transformed
    and packed once (conv.pyx does both per call: an optimizer rewrites a kernel in place).
    The same header calls on the same tiles: conv.pyx's bits, whatever the blocks or runs
    (a tile's sums do not depend on the tiles beside it; the plan checks). The V and M
    blocks live in the caller's workspace (``work_size``), so threads sharing one object
    share no scratch.

    Legend: N batch, H/W input, HO/WO output, C channels, F filters, m output pixels per
    tile side, nk = (m+2)^2 transformed positions, T tiles per block."""

    cdef object _arrays
    cdef const float* _bias
    cdef const float* _kernel
    cdef float* _u
    cdef float* _up
    cdef const float* _zeros
    cdef const Py_ssize_t* _roff
    cdef readonly Py_ssize_t N, H, W, C, F, HO, WO, HP, WP, PT, PL, m, nk, T, TH, TW, ntiles
    cdef readonly int level
    cdef int act

    def __init__(self, kernel, bias, g, int m, Py_ssize_t T, int act):
        """kernel (3, 3, C, F) and bias (F,) or None: float32, C-contiguous; g: conv.pyx's
        planned geometry of a 3x3 stride-1 conv; m: conv._wino_tile(g); T:
        conv._wino_block_tiles(g, m); act: linear or relu."""
        if act not in (0, ACT_RELU):
            raise ValueError("Conv2DWinograd: linear or relu only (other epilogues stay in "
                             "conv.pyx)")
        if m != 2 and m != 4:
            raise ValueError(f"Conv2DWinograd: tile must be 2 or 4, got {m}")
        self.N, self.H, self.W, self.C, self.F = g["N"], g["H"], g["W"], g["C"], g["F"]
        self.HO, self.WO, self.HP, self.WP = g["HO"], g["WO"], g["HP"], g["WP"]
        self.PT, self.PL = g["PT"], g["PL"]
        if (g["KH"], g["KW"], g["SH"], g["SW"], g["DH"], g["DW"]) != (3, 3, 1, 1, 1, 1) \
                or self.HP != self.HO + 2 or self.WP != self.WO + 2 \
                or min(self.N, self.HO, self.WO, self.C, self.F, T) < 1:
            raise ValueError("Conv2DWinograd: a 3x3 stride-1 conv with pixels, channels and "
                             "tiles only")
        kernel = np.ascontiguousarray(kernel, dtype=np.float32)
        if kernel.shape != (3, 3, self.C, self.F):
            raise ValueError(f"Conv2DWinograd: kernel {kernel.shape} does not fit the geometry")
        self.m, self.nk = m, (m + 2) * (m + 2)
        self.TH, self.TW = (self.HO + m - 1) // m, (self.WO + m - 1) // m
        self.ntiles = self.N * self.TH * self.TW
        self.T = min(T, self.ntiles)
        u = np.empty(self.nk * self.C * self.F, dtype=np.float32)
        up = np.empty_like(u)
        zeros = np.zeros(max(self.C, self.F), dtype=np.float32)
        roff = np.arange(self.T, dtype=np.intp) * (self.nk * self.C)
        arrays = [kernel, u, up, zeros, roff]
        if bias is not None:
            bias = np.ascontiguousarray(bias, dtype=np.float32)
            arrays.append(bias)
            self._bias = <const float*><Py_ssize_t>bias.ctypes.data
        else:
            self._bias = <const float*><Py_ssize_t>zeros.ctypes.data
        self._arrays = arrays
        self._kernel = <const float*><Py_ssize_t>kernel.ctypes.data
        self._u = <float*><Py_ssize_t>u.ctypes.data
        self._up = <float*><Py_ssize_t>up.ctypes.data
        self._zeros = <const float*><Py_ssize_t>zeros.ctypes.data
        self._roff = <const Py_ssize_t*><Py_ssize_t>roff.ctypes.data
        self.act = act
        self.level = -1
        self._pack()

    cdef void _pack(self) noexcept:
        """The transformed kernel in panels of the microkernel level in use (set_kernel may
        change it between calls), as conv.pyx's _run_forward_winograd makes them."""
        cdef Py_ssize_t k, CF = self.C * self.F
        self.level = pynn_mk_level()
        if self.m == 4:
            pynn_wino4_kernel_f(self._kernel, self.C, self.F, self._u)
        else:
            pynn_wino_kernel_f(self._kernel, self.C, self.F, self._u)
        for k in range(self.nk):
            pynn_pack_panels_f(self._u + k * CF, self.F, self.C, self.F, PYNN_NC_F,
                               self._up + k * CF)

    cdef inline Py_ssize_t _block_floats(self) noexcept nogil:
        return self.nk * self.T * (self.C + self.F)

    def work_size(self):
        """Floats of workspace ``run`` takes: the V and M blocks of every run."""
        return WINO_MAX_RUNS * self._block_floats()

    def run(self, const float[:, :, :, ::1] x, float[::1] work, float[:, :, :, ::1] y,
            int threads=1):
        """y (N, HO, WO, F) = act(conv(x) + bias); work: work_size() floats; threads: how
        many of pynn's team split the tiles (0: OpenMP's current count)."""
        if (x.shape[0] != self.N or x.shape[1] != self.H or x.shape[2] != self.W
                or x.shape[3] != self.C or y.shape[0] != self.N or y.shape[1] != self.HO
                or y.shape[2] != self.WO or y.shape[3] != self.F
                or work.shape[0] < WINO_MAX_RUNS * self._block_floats()):
            raise ValueError(f"Conv2DWinograd.run: x {[x.shape[i] for i in range(4)]}, y "
                             f"{[y.shape[i] for i in range(4)]} or the workspace do not fit "
                             f"({self.N}, {self.H}, {self.W}, {self.C}) -> ({self.N}, "
                             f"{self.HO}, {self.WO}, {self.F})")
        if self.level != pynn_mk_level():
            self._pack()
        if threads < 1:
            threads = omp_get_max_threads()
        with nogil:
            self._run(&x[0, 0, 0, 0], &work[0], &y[0, 0, 0, 0], threads)

    cdef void _run(self, const float* x, float* work, float* y, int threads) noexcept nogil:
        """threads > 1 (a plan's threads, or a lane split; from LANE_SPLIT_MIN_MACS of
        direct arithmetic): the tiles in equal runs, each in its own blocks; run i on team
        slot i first, or, from WAKE_MIN_MACS, as an ordinary job that wakes sleeping
        workers."""
        cdef _WinoRunsJob job
        cdef Py_ssize_t runs = min(<Py_ssize_t>threads, WINO_MAX_RUNS, self.ntiles)
        cdef double macs = <double>self.N * self.HO * self.WO * 9 * self.C * self.F
        if runs <= 1 or macs < LANE_SPLIT_MIN_MACS:
            self._tiles(x, work, y, 0, self.ntiles)
            return
        job.step, job.x, job.work, job.y, job.runs = <void*>self, x, work, y, runs
        if macs >= WAKE_MIN_MACS:
            pynn_team_for(runs, 1, threads, _wino_runs_job, &job)
        else:
            pynn_team_for_affine(runs, threads, _wino_runs_job, &job)

    cdef void _tiles(self, const float* x, float* work, float* y, Py_ssize_t t_begin,
                     Py_ssize_t t_end) noexcept nogil:
        """Tiles [t_begin, t_end) in blocks of T, in this run's V and M (work)."""
        cdef Py_ssize_t C = self.C, F = self.F, nk = self.nk, m = self.m
        cdef float* V = work
        cdef float* M = work + nk * self.T * C
        cdef Py_ssize_t t0 = t_begin, nt, TT = self.TH * self.TW, n, th, tw, run
        cdef Py_ssize_t t, h, w0, w1, j, off, cols
        cdef float v
        cdef float* z
        while t0 < t_end:
            nt = min(self.T, t_end - t0)
            if m == 4:
                pynn_wino4_input_f(x, self.H, self.W, self.PT, self.PL, self.HP, self.WP, C,
                                   self.TH, self.TW, t0, nt, C, nk * C, self._zeros, V)
            else:
                pynn_wino_input_f(x, self.H, self.W, self.PT, self.PL, self.HP, self.WP, C,
                                  self.TH, self.TW, t0, nt, C, nk * C, self._zeros, V)
            pynn_wino_gemm_f(V, C, self._up, M, F, nk * F, nt, C, F, PYNN_NC_F, self._roff,
                             <int>nk)
            if m == 4:
                pynn_wino4_output_f(M, F, nk * F, F, self._bias, self.TH, self.TW, self.HO,
                                    self.WO, t0, nt, y)
            else:
                pynn_wino_output_f(M, F, nk * F, F, self._bias, self.TH, self.TW, self.HO,
                                   self.WO, t0, nt, y)
            if self.act == ACT_RELU:
                # conv.pyx's _wino_epilogue over the block's pixels, its _relu_row (NaN and
                # -0.0 pass through)
                t = t0
                while t < t0 + nt:
                    n = t // TT
                    th = (t % TT) // self.TW
                    tw = t % self.TW
                    run = min(self.TW - tw, t0 + nt - t)
                    w0 = m * tw
                    w1 = min(m * (tw + run), self.WO)
                    for h in range(m * th, min(m * th + m, self.HO)):
                        off = ((n * self.HO + h) * self.WO + w0) * F
                        z = y + off
                        cols = (w1 - w0) * F
                        for j in range(cols):
                            v = z[j]
                            z[j] = 0 if v < 0 else v
                    t = t + run
            t0 = t0 + nt


ctypedef struct _WinoRunsJob:
    void* step          # the Conv2DWinograd, borrowed for the call
    const float* x
    float* work
    float* y
    Py_ssize_t runs


cdef void _wino_runs_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    """Runs [begin, end) of a Conv2DWinograd's tiles, run i in the i-th V and M blocks."""
    cdef _WinoRunsJob* j = <_WinoRunsJob*>ctx
    cdef Py_ssize_t ntiles = (<Conv2DWinograd>j.step).ntiles
    cdef Py_ssize_t block = (<Conv2DWinograd>j.step)._block_floats()
    cdef long i
    for i in range(begin, end):
        (<Conv2DWinograd>j.step)._tiles(j.x, j.work + i * block, j.y, i * ntiles // j.runs,
                                        (i + 1) * ntiles // j.runs)


# -- a whole one-thread chain plan ------------------------------------------------------------
cdef enum:
    STEP_CONV = 0
    STEP_POOL = 1
    STEP_FLAT = 2
    STEP_DENSE = 3
    STEP_WINO = 4


cdef class Program:
    """A one-thread chain plan whose steps are all native here (Conv2DDirect, MaxPool2D,
    a reshape, a one-row DenseChain last): the small CNN's whole batch-1 call as one native
    call: no Python between the steps (the GIL released once for all of them and handed
    on as _gil.h says), intermediates in the calling thread's workspace (one zeroed array
    per thread: each padded input keeps its zero margins between calls). Per step through
    Python it cost a method call and three typed memoryviews."""

    cdef list _steps
    cdef void** _objs    # _steps' objects, borrowed (the list keeps them), for the nogil walk
    cdef const int[::1] _kinds
    cdef const Py_ssize_t[::1] _pads
    cdef const Py_ssize_t[::1] _outs
    cdef Py_ssize_t _work
    cdef object _in_shape, _out_shape, _local

    def __init__(self, steps, in_shape, out_shape):
        """steps: (kind, native object or None, output size in floats) in order, kind one of
        'conv', 'pool', 'flatten', 'dense' (a DenseChain of one row, the last step)."""
        import threading

        kinds, pads, outs, objs = [], [], [], []
        work = 0
        codes = {"conv": STEP_CONV, "pool": STEP_POOL, "flatten": STEP_FLAT,
                 "dense": STEP_DENSE, "wino": STEP_WINO}
        for j, (kind, obj, size) in enumerate(steps):
            code = codes[kind]
            if code == STEP_CONV and not isinstance(obj, Conv2DDirect) or \
                    code == STEP_WINO and not isinstance(obj, Conv2DWinograd) or \
                    code == STEP_POOL and not isinstance(obj, MaxPool2D) or \
                    code == STEP_DENSE and not (isinstance(obj, DenseChain) and obj.rows == 1
                                                and j == len(steps) - 1):
                raise ValueError(f"Program: step {j} ({kind}) is not a native step here")
            pad = 0
            if code == STEP_CONV and obj.padded:
                shape = obj.pad_shape()
                pad = shape[0] * shape[1] * shape[2] * shape[3]
            elif code == STEP_WINO:
                pad = obj.work_size()  # its V and M blocks
            elif code == STEP_DENSE:
                pad = 2 * obj.width  # the chain's scratch
            kinds.append(code)
            pads.append(pad)
            outs.append(int(size) if j < len(steps) - 1 and code != STEP_FLAT else 0)
            objs.append(obj)
            work += pad + outs[len(outs) - 1]
        if not steps or kinds[len(kinds) - 1] == STEP_FLAT:
            raise ValueError("Program: needs steps, the last one computing")
        self._steps = objs
        self._objs = <void**>malloc(len(objs) * sizeof(void*))
        if self._objs == NULL:
            raise MemoryError("Program: no memory for its steps")
        for j in range(len(objs)):
            self._objs[j] = <void*>objs[j]
        self._kinds = np.array(kinds, dtype=np.intc)
        self._pads = np.array(pads, dtype=np.intp)
        self._outs = np.array(outs, dtype=np.intp)
        self._work = work
        self._in_shape, self._out_shape = tuple(in_shape), tuple(out_shape)
        self._local = threading.local()

    def __dealloc__(self):
        free(self._objs)

    def predict_one(self, x):
        """A fresh output for x (a C-contiguous, aligned, native float32 ndarray of the
        plan's input shape), or None for anything else."""
        cdef cnp.ndarray a, out, work
        cdef float* w
        cdef const float* src
        cdef float* y
        cdef Py_ssize_t j, nsteps = len(self._steps)
        cdef object obj, last
        cdef PyThreadState* gil
        cdef int threads
        cdef const Py_ssize_t* lane
        if type(x) is not np.ndarray:
            return None
        a = <cnp.ndarray>x
        if (cnp.PyArray_TYPE(a) != cnp.NPY_FLOAT32 or not cnp.PyArray_ISCARRAY_RO(a)
                or not cnp.PyArray_ISNOTSWAPPED(a) or x.shape != self._in_shape):
            return None
        work = getattr(self._local, "work", None)
        if work is None:
            work = self._local.work = np.zeros(max(self._work, 1), dtype=np.float32)
        for j in range(nsteps):  # set_kernel between calls: repack before the GIL goes
            obj = self._steps[j]
            if self._kinds[j] == STEP_CONV and (<Conv2DDirect>obj).level != pynn_mk_level():
                (<Conv2DDirect>obj)._pack()
            elif self._kinds[j] == STEP_WINO and \
                    (<Conv2DWinograd>obj).level != pynn_mk_level():
                (<Conv2DWinograd>obj)._pack()
        out = np.empty(self._out_shape, dtype=np.float32)
        src = <const float*>cnp.PyArray_DATA(a)
        y = <float*>cnp.PyArray_DATA(out)
        w = <float*>cnp.PyArray_DATA(work)
        threads = pynn_team_lane_threads()
        last = self._steps[nsteps - 1]
        lane = (<DenseChain>last)._lane(threads) if (
            threads > 1 and self._kinds[nsteps - 1] == STEP_DENSE) else NULL
        gil = pynn_gil_release()  # handed on between lane threads (_gil.h)
        self._walk(src, w, y, nsteps, threads, lane)
        pynn_team_lane_done()
        pynn_gil_acquire(gil)
        return out

    cdef void _walk(self, const float* src, float* w, float* y, Py_ssize_t nsteps,
                    int threads, const Py_ssize_t* lane) noexcept nogil:
        """lane: the last step's (the Dense chain's) split kernels for `threads`."""
        cdef Py_ssize_t j
        cdef int kind
        cdef void* step
        cdef float* dst
        for j in range(nsteps):
            kind = self._kinds[j]
            step = self._objs[j]
            dst = y if j == nsteps - 1 else w + self._pads[j]
            if kind == STEP_CONV:
                (<Conv2DDirect>step)._run(src, w if self._pads[j] else NULL, dst, threads)
            elif kind == STEP_WINO:
                (<Conv2DWinograd>step)._run(src, w, dst, threads)
            elif kind == STEP_POOL:
                (<MaxPool2D>step)._forward_lane(src, dst, threads)
            elif kind == STEP_DENSE:
                (<DenseChain>step)._forward(src, w, dst, 1, False, threads, lane)
            if kind == STEP_FLAT:  # NHWC is already the flat order: nothing moves
                continue
            src = dst
            w = w + self._pads[j] + self._outs[j]
