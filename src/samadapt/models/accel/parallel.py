"""Work that is independent per prompt, spread over the cores: one thread per core, each running its
operators on one intra-op thread.

Splitting each matrix product of one prompt over two intra-op threads leaves much of the work to
synchronisation at these sizes (a 4096 x 256 x 128 product takes well under a millisecond); giving each
core whole prompts keeps it busy. The decoder gives each thread a run of prompts to decode from start to
end (:func:`map_runs`), so the work on the prompt tokens, small products that would keep one core busy
while the others wait, is spread too, and the threads meet once per call.

torch keeps the intra-op thread count per thread (OpenMP's setting of the calling thread); a thread takes
the process-wide value when it first asks for it. Inside :func:`prompt_threads` the calling thread runs on
one intra-op thread (an OpenMP team of its own, idle and spinning on a core between operators, would slow
the other threads) and :func:`map_runs` runs the first run of prompts itself, the others in worker
threads that set their count to one when they start. ``torch.set_num_threads`` also sets the process-wide
value, which is put back at once, so no other thread is changed (one that first asks during the
microseconds in between would start with one intra-op thread).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

import torch

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

T = TypeVar("T")

_LOCK = threading.Lock()
_pools: dict[int, ThreadPoolExecutor] = {}
_local = threading.local()  # .threads: the intra-op threads the caller had when it entered prompt_threads


def _one_thread() -> None:
    """A worker's start: its intra-op threads set to one. torch gives a thread the process-wide count when it
    first asks for it, which would undo an earlier setting: asking first makes the setting stay."""
    torch.get_num_threads()
    torch.set_num_threads(1)


def _process_wide(threads: int) -> None:
    """Set torch's process-wide intra-op thread count (what threads take when they first ask) without changing
    the calling thread's: ``torch.set_num_threads`` sets both, so it runs in a thread of its own."""
    setter = threading.Thread(target=torch.set_num_threads, args=(threads,), name="samadapt-threads")
    setter.start()
    setter.join()


def _pool(workers: int, threads: int) -> ThreadPoolExecutor:
    """``workers`` threads with one intra-op thread each, all started; ``threads``: the process-wide count
    to leave behind."""
    with _LOCK:
        if workers not in _pools:
            pool = ThreadPoolExecutor(workers, thread_name_prefix="samadapt-prompts", initializer=_one_thread)
            started = threading.Barrier(workers)
            list(pool.map(lambda _: started.wait(timeout=60), range(workers)))  # every thread exists
            _process_wide(threads)
            _pools[workers] = pool
        return _pools[workers]


@contextmanager
def prompt_threads(prompts: int) -> Iterator[int]:
    """Within: with at least as many ``prompts`` as this thread has intra-op threads, it runs operators on
    one intra-op thread and :func:`map_runs` spreads its runs over as many threads as it had, itself
    included; with fewer, nothing changes (each operator keeps all threads). Yields the threads per run."""
    threads = getattr(_local, "threads", None)
    if threads is not None:  # nested: already set up
        yield threads
        return
    threads = torch.get_num_threads()
    if prompts < threads or threads < 2:
        yield threads
        return
    _local.threads = threads
    torch.set_num_threads(1)
    _process_wide(threads)  # only this thread runs on one
    try:
        yield threads
    finally:
        del _local.threads
        torch.set_num_threads(threads)


def map_runs(fn: Callable[[range], T], n: int, split: bool = True) -> list[T]:
    """``fn`` over contiguous runs of ``range(n)``: inside :func:`prompt_threads` (when it spreads prompts) and
    with ``split``, one run per thread, each on one intra-op thread, the first in the calling thread; elsewhere,
    or with ``split`` False, one run in the calling thread. Within a run, further calls run in their thread.

    ``fn`` must not depend on the order of the calls; the calls see the caller's gradient and inference mode.
    """
    threads: int | None = getattr(_local, "threads", None)
    workers = min(n, threads) if split and threads is not None else 1
    if threads is None or workers <= 1:
        return [fn(range(n))] if n else []
    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

    def run(indices: range) -> T:
        with torch.inference_mode() if inference else torch.set_grad_enabled(grad):
            return fn(indices)

    runs = [range(k * n // workers, (k + 1) * n // workers) for k in range(workers)]
    others = [_pool(workers - 1, threads).submit(run, indices) for indices in runs[1:]]
    del _local.threads  # calls within the caller's own run stay in it, as they do in the workers
    try:
        first = run(runs[0])
    finally:
        _local.threads = threads
    return [first, *(future.result() for future in others)]


#: Elements of a prompt's image tokens from which prompts go to threads of their own (:func:`map_runs`'s
#: ``split``); smaller ones cost less than the hand-over.
SPLIT_ELEMENTS = 2**18


def worth_threads(tokens: torch.Tensor) -> bool:
    """Whether per-prompt work on tensors like ``tokens`` (one prompt's image tokens) is worth a thread each."""
    return tokens.numel() >= SPLIT_ELEMENTS
