"""Data that ``fit``/``evaluate``/``predict`` take besides arrays: Keras 3's ``PyDataset``,
Python generators and iterators, and any object with ``__len__``/``__getitem__`` returning
batches (``ImageDataGenerator.flow`` and friends).

Batches are prepared in background threads (or processes, ``use_multiprocessing=True``) while
the native step runs, into a bounded queue: ``max_queue_size`` batches ahead at most. An
exception raised while preparing a batch surfaces in the training thread with its traceback;
leaving an epoch early (``stop_training``, an error, Ctrl-C) cancels what is queued and stops
the workers, so no thread or process outlives ``fit``.
"""

import collections
import queue
import threading

import numpy as np


class PyDataset:
    """Keras 3's ``keras.utils.PyDataset``: subclass it with ``__len__`` (batches per epoch)
    and ``__getitem__(index)`` returning ``(x, y)`` or ``(x, y, sample_weight)`` (or ``x``
    alone for predict); ``on_epoch_end`` runs after each epoch. ``workers`` threads (processes
    with ``use_multiprocessing``; the dataset must then pickle) prepare up to
    ``max_queue_size`` batches ahead."""

    def __init__(self, workers=1, use_multiprocessing=False, max_queue_size=10):
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"PyDataset: workers must be a positive int, got {workers!r}")
        if isinstance(max_queue_size, bool) or not isinstance(max_queue_size, int) \
                or max_queue_size < 1:
            raise ValueError(f"PyDataset: max_queue_size must be a positive int, got "
                             f"{max_queue_size!r}")
        self._workers = workers
        self._use_multiprocessing = bool(use_multiprocessing)
        self._max_queue_size = max_queue_size

    @property
    def workers(self):
        return getattr(self, "_workers", 1)

    @property
    def use_multiprocessing(self):
        return getattr(self, "_use_multiprocessing", False)

    @property
    def max_queue_size(self):
        return getattr(self, "_max_queue_size", 10)

    def __len__(self):
        raise NotImplementedError(f"{type(self).__name__} must define __len__")

    def __getitem__(self, index):
        raise NotImplementedError(f"{type(self).__name__} must define __getitem__")

    def on_epoch_end(self):
        pass

    @property
    def num_batches(self):
        return len(self)


def _is_indexed_dataset(x):
    return isinstance(x, PyDataset) or (
        hasattr(x, "__getitem__") and hasattr(x, "__len__")
        and not isinstance(x, (np.ndarray, list, tuple, dict, str, bytes))
        and not hasattr(x, "__array__"))


def _is_iterator(x):
    return not isinstance(x, (np.ndarray, list, tuple, dict, str, bytes)) and not hasattr(
        x, "__array__") and (hasattr(x, "__next__") or hasattr(x, "__iter__"))


def is_dataset(x):
    """A PyDataset, an indexed batch source or an iterator: not data fit slices itself
    (arrays, array-likes, and lists/tuples/dicts of them)."""
    return x is not None and (_is_indexed_dataset(x) or _is_iterator(x))


def split_batch(batch, what, need_y):
    """A dataset's batch as (x, y, sample_weight)."""
    if isinstance(batch, tuple):
        if not 1 <= len(batch) <= 3:
            raise ValueError(f"{what}: a batch must be x, (x,), (x, y) or (x, y, sample_weight); "
                             f"got a tuple of {len(batch)}")
        x = batch[0]
        y = batch[1] if len(batch) > 1 else None
        sw = batch[2] if len(batch) > 2 else None
    else:
        x, y, sw = batch, None, None
    if need_y and y is None:
        raise ValueError(f"{what}: the data must yield (x, y) or (x, y, sample_weight) tuples; "
                         f"got a batch without targets")
    return x, y, sw


class Batches:
    """Epochs of batches from a dataset or an iterator. ``steps``: batches per epoch (None:
    until the iterator ends). ``epoch()`` is a context manager yielding an iterator."""

    def __init__(self, data, steps, what):
        self.what = what
        self.data = data
        if _is_indexed_dataset(data):
            self.indexed = True
            n = len(data)
            if steps is None:
                steps = n
            elif steps > n:
                raise ValueError(f"{what}: steps {steps} is more than the dataset's {n} batches")
            self.workers = getattr(data, "workers", 1)
            self.processes = getattr(data, "use_multiprocessing", False)
            self.ahead = getattr(data, "max_queue_size", 10)
        else:
            self.indexed = False
            self.iterator = iter(data)
            self.workers, self.processes, self.ahead = 1, False, 10
        if steps is not None and (isinstance(steps, bool) or not isinstance(
                steps, (int, np.integer)) or steps < 1):
            raise ValueError(f"{what}: steps must be a positive int, got {steps!r}")
        self.steps = None if steps is None else int(steps)

    def epoch(self):
        if self.indexed:
            return _IndexedEpoch(self)
        return _IteratorEpoch(self)


def _get_item(data, index):
    return data[index]


class _IndexedEpoch:
    def __init__(self, batches):
        self.b = batches
        self.pool = None

    def __enter__(self):
        import concurrent.futures  # its logging import is a few ms of `import pynn`

        b = self.b
        if b.processes:
            self.pool = concurrent.futures.ProcessPoolExecutor(b.workers)
        else:
            self.pool = concurrent.futures.ThreadPoolExecutor(
                b.workers, thread_name_prefix="pynn-data")
        return self._run()

    def _run(self):
        b = self.b
        pending = collections.deque()
        nxt = 0
        while nxt < b.steps and len(pending) < b.ahead + b.workers:
            pending.append(self.pool.submit(_get_item, b.data, nxt))
            nxt += 1
        while pending:
            batch = pending.popleft().result()  # a worker's exception is raised here
            if nxt < b.steps:
                pending.append(self.pool.submit(_get_item, b.data, nxt))
                nxt += 1
            yield batch

    def __exit__(self, *exc):
        self.pool.shutdown(wait=True, cancel_futures=True)
        if exc[0] is None and hasattr(self.b.data, "on_epoch_end"):
            self.b.data.on_epoch_end()
        return False


_END = object()


class _IteratorEpoch:
    """One thread pulls from the (not thread-safe) iterator into a bounded queue."""

    def __init__(self, batches):
        self.b = batches
        self.stop = threading.Event()

    def __enter__(self):
        b = self.b
        self.queue = queue.Queue(maxsize=b.ahead)
        limit = b.steps

        def pull():
            count = 0
            try:
                while not self.stop.is_set() and (limit is None or count < limit):
                    try:
                        item = next(b.iterator)
                    except StopIteration:
                        break
                    count += 1
                    while not self.stop.is_set():
                        try:
                            self.queue.put((True, item), timeout=0.1)
                            break
                        except queue.Full:
                            continue
            except BaseException as exc:  # handed to the training thread, raised there
                self._put((False, exc))
                return
            self._put((True, _END))

        self.thread = threading.Thread(target=pull, name="pynn-data", daemon=True)
        self.thread.start()
        return self._run()

    def _put(self, item):
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _run(self):
        while True:
            ok, item = self.queue.get()
            if not ok:
                raise item
            if item is _END:
                return
            yield item

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=5)
        return False
