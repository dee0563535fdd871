"""Data-parallel training over MPI (mpi4py; ``pip install pynn[distributed]`` brings MPICH).

Launch with ``mpiexec -n 4 python train.py``; build and compile the model inside
``with DataParallel().scope():`` and ``fit``/``evaluate`` run unchanged: rank 0's weights,
optimizer state and shuffle order are broadcast at the start, each global batch is split
across ranks (``batch_size`` stays the global batch, as Keras's distribution API does),
gradients are averaged with non-blocking allreduce over buckets, the logs are averaged
weighted by sample counts, and only rank 0 prints or writes checkpoints.

Nothing here imports mpi4py until a rank, a collective or a strategy is asked for; without
mpi4py every function answers as a single process (rank 0 of 1). ``import pynn`` never loads
this module: pynn.models finds the active strategy through ``sys.modules``.

Gradients overlap the backward pass as PyTorch DDP's do: the trainable variables are cut
into buckets in reverse layer order, and a bucket's non-blocking allreduce starts the moment
the model's executor reports the last of its layers' grads complete, while the earlier layers
still back-propagate. MPICH progresses a reduction only inside MPI calls, so each report
also tests the reductions in flight. Gradients on the OpenCL backend are downloaded to the
host, reduced and uploaded again (no device-aware MPI yet).

A rank that raises calls MPI_Abort; a rank killed outright (SIGKILL, out of memory) is seen by
the launcher (MPICH's hydra), which ends the whole job with an error instead of leaving the
others blocked in a collective.
"""

import contextlib
import os
import queue
import sys
import threading
import time
import traceback

import numpy as np

_comm = None
_mpi = None
_active = []


def _world():
    """COMM_WORLD, or None without mpi4py. Importing mpi4py initialises MPI once."""
    global _comm, _mpi
    if _comm is None:
        try:
            from mpi4py import MPI
        except ImportError:
            return None
        _mpi, _comm = MPI, MPI.COMM_WORLD
    return _comm


def rank():
    comm = _world()
    return 0 if comm is None else comm.Get_rank()


def size():
    comm = _world()
    return 1 if comm is None else comm.Get_size()


def local_rank():
    """This rank's index among the ranks of its node (MPICH's and Open MPI's launchers say
    it in the environment; a single process is 0)."""
    for key in ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "PMI_LOCAL_RANK"):
        if key in os.environ:
            return int(os.environ[key])
    return 0


def local_size():
    for key in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "PMI_LOCAL_SIZE"):
        if key in os.environ:
            return int(os.environ[key])
    return 1


def is_primary():
    return rank() == 0


def current():
    """The strategy whose scope() is active, or None (read by pynn.models at compile)."""
    return _active[-1] if _active else None


_ABORT_GRACE_S = 1.0  # seconds a failing rank waits before MPI_Abort (see below)


def _abort_on_uncaught_exception():
    """A rank that raises would leave the others waiting forever in a collective: print its
    traceback and MPI_Abort the whole job instead."""
    previous = sys.excepthook

    def hook(kind, value, tb):
        traceback.print_exception(kind, value, tb)
        sys.stderr.write(f"pynn.distributed: rank {rank()} raised; aborting all ranks\n")
        sys.stderr.flush()
        sys.stdout.flush()
        # mpiexec forwards a rank's output through its own proxy, and MPI_Abort tears the
        # job down at once: on a loaded machine the traceback just written was lost with it
        # (the reason a rank failed is the one thing the user needs). A moment first.
        time.sleep(_ABORT_GRACE_S)
        _comm.Abort(1)
        previous(kind, value, tb)

    sys.excepthook = hook


class _Job:
    """A reduction handed to the communication thread; Wait/Test as an MPI request's."""

    __slots__ = ("run", "done", "error", "seconds")

    def __init__(self, run):
        self.run, self.done, self.error, self.seconds = run, threading.Event(), None, 0.0

    def Test(self):
        return self.done.is_set()

    def Wait(self):
        self.done.wait()
        if self.error is not None:
            raise self.error


class _CommThread:
    """Runs the overlapped reductions on a thread of their own, over a duplicate of the
    world communicator. MPICH moves a non-blocking collective only while the process is
    inside an MPI call, so Iallreduce alone does not overlap the backward pass; a blocking
    Allreduce on this thread (mpi4py releases the GIL, as the native kernels do) runs beside
    it. Needs MPI_THREAD_MULTIPLE, which mpi4py requests by default."""

    def __init__(self, comm):
        self.comm = comm.Dup()
        self.jobs = queue.SimpleQueue()
        self.busy_seconds = 0.0
        threading.Thread(target=self._serve, name="pynn-allreduce", daemon=True).start()

    def submit(self, run):
        job = _Job(run)
        self.jobs.put(job)
        return job

    def _serve(self):
        while True:
            job = self.jobs.get()
            start = time.perf_counter()
            try:
                job.run(self.comm)
            except BaseException as exc:  # handed to the waiting step, which raises it
                job.error = exc
            job.seconds = time.perf_counter() - start
            self.busy_seconds += job.seconds
            job.done.set()


class _Reducer:
    """Averages gradients across ranks: packed into buckets of ``bucket_bytes`` each (1 MiB
    by default, as PyTorch DDP's first bucket: small enough that the first reduction starts
    early in the backward pass), reduced as soon as a bucket's grads are complete. ``compression='fp16'`` sends half
    precision; ``deterministic`` gathers every rank's bucket and sums in rank order, so the
    result never depends on the MPI library's reduction tree or timing."""

    def __init__(self, bucket_bytes=1 << 20, compression=None, deterministic=False):
        if compression not in (None, "fp16"):
            raise ValueError(f"compression must be None or 'fp16', got {compression!r}")
        self.bucket_bytes = int(bucket_bytes)
        self.compression = compression
        self.deterministic = bool(deterministic)
        self.seconds = 0.0  # reducing: on the communication thread, or waited for
        self.exposed_seconds = 0.0  # the training thread's time in here (pack, wait, unpack)
        self.wait_seconds = 0.0  # of which waiting for reductions still running
        self._fp16_sum = None
        self._layout_key = None
        self._step = None
        self._thread = None

    def _op(self):
        if self.compression != "fp16":
            return _mpi.SUM
        if self._fp16_sum is None:
            # MPI has no half-precision SUM; a user op adds the buffers with NumPy.
            def add(a, b, datatype):
                x = np.frombuffer(a, np.float16)
                y = np.frombuffer(b, np.float16)
                np.add(x, y, out=y)
            self._fp16_sum = _mpi.Op.Create(add, commute=True)
        return self._fp16_sum

    def _comm_thread(self):
        if self._thread is None and _mpi.Query_thread() == _mpi.THREAD_MULTIPLE:
            self._thread = _CommThread(_world())
        return self._thread

    # -- overlapped with the backward pass ---------------------------------------------------
    def _layout(self, variables):
        key = tuple(id(v) for v in variables)
        if key == self._layout_key:
            return
        # The last layers' grads complete first, so buckets fill in reverse layer order.
        buckets = self._buckets_of(list(reversed(variables)))
        self._buckets = buckets
        self._bucket_of = {id(v): i for i, bucket in enumerate(buckets) for v in bucket}
        self._buffers = [self._buffers_for(bucket) for bucket in buckets]
        self._layout_key = key

    def begin(self, variables, scale):
        """Start a training step: returns the hook the executor calls per finished layer."""
        self._layout(variables)
        self._step = {"scale": scale, "ready": [0] * len(self._buckets), "seen": set(),
                      "pending": [None] * len(self._buckets)}
        return self._layer_ready

    def _layer_ready(self, layer):
        from pynn import backend
        start = time.perf_counter()
        step, b = self._step, backend.current()
        for v in layer.trainable_weights:
            i = self._bucket_of.get(id(v))
            if i is None or id(v) in step["seen"]:
                continue
            step["seen"].add(id(v))
            step["ready"][i] += 1
            if step["ready"][i] == len(self._buckets[i]):
                step["pending"][i] = self._start(b, self._buckets[i], step["scale"],
                                                 self._buffers[i], self._comm_thread())
        if self._thread is None:  # non-blocking requests move only inside MPI calls
            for pending in step["pending"]:
                if pending is not None:
                    pending[0].Test()
        self.exposed_seconds += time.perf_counter() - start

    def finish(self):
        """End the step: buckets no layer completed (no loss reached them: zeros on every
        rank alike) start now; then every reduction is waited for and unpacked."""
        from pynn import backend
        start = time.perf_counter()
        step, b = self._step, backend.current()
        self._step = None
        thread = self._comm_thread()
        for i, bucket in enumerate(self._buckets):
            if step["pending"][i] is None:
                step["pending"][i] = self._start(b, bucket, step["scale"], self._buffers[i],
                                                 thread)
        for bucket, (request, send, recv) in zip(self._buckets, step["pending"]):
            self._finish(b, bucket, request, send, recv)
            if isinstance(request, _Job):
                self.seconds += request.seconds
        self.exposed_seconds += time.perf_counter() - start

    def _buckets_of(self, variables):
        buckets, current, nbytes = [], [], 0
        for v in variables:
            current.append(v)
            nbytes += int(np.prod(v.value.shape)) * np.dtype(v.value.dtype).itemsize
            if nbytes >= self.bucket_bytes:
                buckets.append(current)
                current, nbytes = [], 0
        if current:
            buckets.append(current)
        return buckets

    def _buffers_for(self, bucket):
        """A bucket's send and receive buffers, kept across steps."""
        dtype = (np.float16 if self.compression == "fp16"
                 else np.result_type(*[v.value.dtype for v in bucket]))
        n = sum(int(np.prod(v.value.shape)) for v in bucket)
        send = np.empty(n, dtype)
        recv = (np.empty((_world().Get_size(), n), dtype) if self.deterministic
                else np.empty(n, dtype))
        return send, recv

    # -- after the backward pass (DistributedOptimizer) ---------------------------------------
    def reduce(self, variables, scale):
        """Each v.grad becomes sum over ranks of scale_r * grad_r (in place)."""
        from pynn import backend
        comm = _world()
        if comm.Get_size() == 1:
            return  # one rank's gradient is already the global batch's
        b = backend.current()
        start = time.perf_counter()
        # Every rank must reduce the same variables: a grad missing on one rank is zeros.
        have = np.array([v.grad is not None for v in variables], np.int8)
        everyone = np.empty_like(have)
        comm.Allreduce(have, everyone, op=_mpi.MAX)
        for v, need in zip(variables, everyone):
            if need and v.grad is None:
                v.grad = b.zeros(tuple(v.value.shape), dtype=v.value.dtype)
        buckets = self._buckets_of([v for v, need in zip(variables, everyone) if need])
        pending = [self._start(b, bucket, scale, self._buffers_for(bucket), None)
                   for bucket in buckets]
        for bucket, (request, send, recv) in zip(buckets, pending):
            self._finish(b, bucket, request, send, recv)
        self.exposed_seconds += time.perf_counter() - start

    def _start(self, b, bucket, scale, buffers, thread):
        send, recv = buffers
        offset = 0
        for v in bucket:  # pack and scale in one pass per variable
            n = int(np.prod(v.value.shape))
            if v.grad is None:
                send[offset:offset + n] = 0
            else:
                np.multiply(np.asarray(b.to_numpy(v.grad)).reshape(-1), scale,
                            out=send[offset:offset + n], casting="same_kind")
            offset += n
        deterministic, op = self.deterministic, self._op()
        if thread is not None:
            if deterministic:
                return thread.submit(lambda comm: comm.Allgather(send, recv)), send, recv
            return thread.submit(lambda comm: comm.Allreduce(send, recv, op=op)), send, recv
        comm = _world()
        if deterministic:
            return comm.Iallgather(send, recv), send, recv
        return comm.Iallreduce(send, recv, op=op), send, recv

    def _finish(self, b, bucket, request, send, recv):
        start = time.perf_counter()
        request.Wait()
        waited = time.perf_counter() - start
        self.wait_seconds += waited
        if not isinstance(request, _Job):
            self.seconds += waited
        if self.deterministic:
            total = recv[0].astype(np.float64)
            for row in recv[1:]:  # fixed rank order
                total += row
            recv = total
        offset = 0
        for v in bucket:
            n = int(np.prod(v.value.shape))
            part = recv[offset:offset + n].reshape(v.value.shape)
            offset += n
            if isinstance(v.grad, np.ndarray) and v.grad.shape == part.shape:
                np.copyto(v.grad, part, casting="unsafe")
            else:
                v.grad = b.asarray(np.ascontiguousarray(part, v.value.dtype), v.value.dtype)


class DataParallel:
    """Synchronous data parallelism over all MPI ranks; see the module docstring."""

    def __init__(self, bucket_bytes=1 << 20, compression=None, deterministic=False,
                 threads="auto", overlap=True, device="auto"):
        comm = _world()
        if comm is None:
            raise ImportError("DataParallel needs mpi4py: pip install 'pynn[distributed]'")
        _select_rank_device(device)
        self._reducer = _Reducer(bucket_bytes, compression, deterministic)
        self.overlap = bool(overlap)
        self._local_count = 0
        self._global_count = 0
        if comm.Get_size() > 1:
            _abort_on_uncaught_exception()
            if threads == "auto":
                # Ranks of one node share its cores rather than each taking them all.
                from pynn import _config
                _config.set_num_threads(max(1, _config.usable_cores() // local_size()))

    @property
    def is_primary(self):
        return is_primary()

    @property
    def allreduce_seconds(self):
        """Time spent packing, reducing and unpacking gradients."""
        return self._reducer.seconds

    @property
    def exposed_allreduce_seconds(self):
        """The training thread's time in gradient reduction: packing, unpacking and waiting
        for reductions the backward pass did not hide."""
        return self._reducer.exposed_seconds

    @property
    def allreduce_wait_seconds(self):
        """Of that, waiting for reductions still running when the backward pass ended."""
        return self._reducer.wait_seconds

    @contextlib.contextmanager
    def scope(self):
        _active.append(self)
        try:
            yield self
        finally:
            _active.remove(self)

    def on_fit_begin(self, model, source=None):
        _check_same_model(model)
        if source is not None:
            _check_same_data(source)
        broadcast_variables(model, root=0)

    def shard_dataset(self, data):
        """An indexed dataset (PyDataset) as this rank's view: batches rank, rank + p, ...
        so no rank reads another's; each global step is the p ranks' batches together.
        Iterators and generators are read whole on every rank and each batch is split."""
        from pynn.data import _is_indexed_dataset
        p = size()
        if p == 1 or not _is_indexed_dataset(data):
            return data
        if len(data) < p:
            raise ValueError(f"pynn.distributed: the dataset has {len(data)} batches, fewer "
                             f"than the {p} ranks that each need one per step")
        return _RankShard(data, rank(), p)

    def shard(self, xs, ys, sws, source=None):
        if getattr(source, "rank_local", False):
            # This rank's batch is its share already; the global count is everyone's.
            self._local_count = xs[0].shape[0]
            self._global_count = int(allreduce_sum([self._local_count])[0])
            return xs, ys, sws
        n = xs[0].shape[0]
        p, r = size(), rank()
        lo, hi = n * r // p, n * (r + 1) // p
        self._local_count, self._global_count = hi - lo, n

        def cut(arrays):
            return [None if a is None else a[lo:hi] for a in arrays]
        return cut(xs), cut(ys), cut(sws)

    def _scale(self):
        # Each rank's loss is a mean over its own samples: weighting by the local count
        # over the global count gives the global batch's mean, even for uneven splits.
        return self._local_count / max(self._global_count, 1)

    def grads_final_hook(self, variables):
        """Called by the model before each backward pass; None on a single rank."""
        if size() == 1 or not self.overlap:
            return None
        return self._reducer.begin(list(variables), self._scale())

    def reduce_gradients(self, variables):
        if size() == 1:
            return
        if self.overlap and self._reducer._step is not None:
            self._reducer.finish()
        else:
            self._reducer.reduce(variables, self._scale())

    def reduce_logs(self, logs, count):
        return average_logs(logs, count)


def _select_rank_device(device):
    """``device='auto'``: on the OpenCL backend each rank of a node takes the next device of
    the selected platform (local_rank modulo their count), as one GPU per rank wants; on the
    CPU nothing changes. A string ('cpu', 'opencl', 'opencl:P:D') selects that device on
    this rank; None leaves the selection alone."""
    from pynn import backend
    if device is None:
        return
    if device != "auto":
        backend.set_device(device)
        return
    current = backend.device()
    if not current.startswith("opencl"):
        return
    from pynn.backend.opencl import runtime
    platform = runtime.device_info()["index"].split(":")[1]
    same = [d["index"] for d in runtime.devices() if d["index"].split(":")[1] == platform]
    if same:
        backend.set_device(same[local_rank() % len(same)])


class _RankShard:
    """Rank r of p's view of an indexed dataset: its batch i is the dataset's batch i*p + r;
    len(dataset) // p batches, so every rank steps through the same number (the last
    len % p batches are left out of the epoch)."""

    rank_local = True

    def __init__(self, data, r, p):
        self.data, self.r, self.p = data, r, p

    def __len__(self):
        return len(self.data) // self.p

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        return self.data[index * self.p + self.r]

    def on_epoch_end(self):
        hook = getattr(self.data, "on_epoch_end", None)
        if hook is not None:
            hook()

    @property
    def workers(self):
        return getattr(self.data, "workers", 1)

    @property
    def use_multiprocessing(self):
        return getattr(self.data, "use_multiprocessing", False)

    @property
    def max_queue_size(self):
        return getattr(self.data, "max_queue_size", 10)


def average_logs(logs, count=1):
    """The logs averaged over ranks, weighted by each rank's ``count``; same on every rank."""
    comm = _world()
    keys = sorted(logs)
    values = np.array([float(logs[k]) * count for k in keys] + [float(count)], np.float64)
    total = np.empty_like(values)
    comm.Allreduce(values, total, op=_mpi.SUM)
    denominator = total[-1] if total[-1] > 0 else 1.0
    return {k: float(v / denominator) for k, v in zip(keys, total[:-1])}


def allreduce_sum(values):
    """The float64 sum over ranks of ``values`` (a small host array), on every rank."""
    values = np.ascontiguousarray(values, np.float64)
    total = np.empty_like(values)
    _world().Allreduce(values, total, op=_mpi.SUM)
    return total


def _check_same_model(model):
    layout = [(v.path, tuple(v.value.shape)) for v in model.weights]
    everyone = _world().allgather(layout)
    for r, other in enumerate(everyone):
        if other != everyone[0]:
            raise ValueError(f"pynn.distributed: rank {r}'s model differs from rank 0's "
                             f"({len(other)} vs {len(everyone[0])} variables, or other "
                             f"shapes); every rank must build the same model")


def _check_same_data(source):
    """Every rank must pass the same training data (each takes its share of each global
    batch): ranks stepping through different numbers of batches would wait on each other's
    collectives forever."""
    mine = (getattr(source, "n", None), source.steps)
    everyone = _world().allgather(mine)
    for r, other in enumerate(everyone):
        if other != everyone[0]:
            def say(d):
                return (f"{d[0] if d[0] is not None else 'unknown'} samples, "
                        f"{d[1] if d[1] is not None else 'unknown'} steps")
            raise ValueError(f"pynn.distributed: rank {r} trains on {say(other)} per epoch, "
                             f"rank 0 on {say(everyone[0])}; with DataParallel every rank "
                             f"passes the same data to fit (each takes its share of every "
                             f"global batch)")


def broadcast_variables(model, root=0):
    """Weights, optimizer state and shuffle order of rank ``root`` on every rank."""
    comm = _world()
    mine = root == rank()
    payload = None
    if mine:
        # The shuffle generator is created here so every rank draws the same permutations.
        model._shuffle_generator()
        payload = {"weights": model.get_weights(), "rng": model.rng_state()}
        optimizer = getattr(model, "optimizer", None)
        if optimizer is not None:
            payload["optimizer"] = optimizer.get_state()
    payload = comm.bcast(payload, root=root)
    if mine:
        return
    model.set_weights(payload["weights"])
    model.set_rng_state(payload["rng"])
    if "optimizer" in payload:
        model.optimizer.set_state(payload["optimizer"], model.trainable_weights)


def DistributedOptimizer(optimizer, compression=None, deterministic=False):
    """Horovod's wrapper: the optimizer averages gradients over ranks before each step (each
    rank feeds its own data at its own batch size). Same class name and config as the
    wrapped optimizer, so saved models load without pynn.distributed."""
    reducer = _Reducer(compression=compression, deterministic=deterministic)
    base = optimizer.__class__

    def apply(self, variables):
        variables = list(variables)
        reducer.reduce([v for v in variables if v.trainable], 1.0 / size())
        return base.apply(self, variables)

    cls = type(base.__name__, (base,), {"apply": apply, "__module__": base.__module__})
    wrapped = cls.__new__(cls)
    wrapped.__dict__.update(optimizer.__dict__)
    return wrapped


try:
    from pynn.callbacks import Callback as _Callback
except ImportError:  # pragma: no cover
    _Callback = object


class BroadcastGlobalVariablesCallback(_Callback):
    """Horovod's callback: rank ``root_rank``'s weights and optimizer state on every rank
    when training begins."""

    def __init__(self, root_rank=0):
        super().__init__()
        self.root_rank = int(root_rank)

    def on_train_begin(self, logs=None):
        broadcast_variables(self.model, self.root_rank)


class MetricAverageCallback(_Callback):
    """Horovod's callback: the epoch logs averaged over ranks (in place)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs:
            logs.update(average_logs(logs))
