"""Worker processes, below every layer that starts them (data/, stages/, the drop-ins): how
they start (fork on Linux) and that they die with the process that started them."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

# The process that imported affext and its main thread: a worker forked from that thread is
# told to die with it (PR_SET_PDEATHSIG follows the forking *thread*, not its process).
_STARTER = (os.getpid(), threading.main_thread().ident)
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_CHECK_SECONDS = 0.5
T = TypeVar("T")
R = TypeVar("R")


def die_with_parent(*_: object) -> None:
    """End this worker process when the process that started it ends, even by kill -9.

    The initialiser of every worker process of affext: DataLoader(worker_init_fn=...) and
    process pools (initializer=...). Without it a worker whose parent is killed can block for
    good on a full pipe, holding its memory. On Linux, a worker forked from the main thread
    of the process that imported affext asks the kernel for SIGKILL when that thread ends
    (prctl PR_SET_PDEATHSIG; a thread that may end before its process does not qualify);
    every worker also checks its parent's pid every PARENT_CHECK_SECONDS on a daemon thread.
    """
    parent = os.getppid()
    starter_pid, starter_thread = _STARTER
    if sys.platform == "linux" and (parent, threading.get_ident()) == (starter_pid, starter_thread):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # else: the watch
    if os.getppid() != parent or parent == 1:  # the parent died before the prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Thread(
        target=_watch_parent, args=(parent,), name="affext-parent-watch", daemon=True
    ).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_SECONDS)
    os.kill(os.getpid(), signal.SIGKILL)


def process_context() -> multiprocessing.context.BaseContext:
    """How affext's process pools start: by fork on Linux, as torch's DataLoader workers do.

    spawn (and forkserver) would import the caller's main module again in every process,
    which breaks a script without an `if __name__ == "__main__":` guard, and torch once per
    process. A fork of this threaded process (OpenMP pool, CUDA context) is safe for pools
    whose processes only run numpy, pydensecrf, pycocotools and PIL, never torch, CUDA or
    OpenMP: the dCRF's (stages/crf.py) and the COCO conversion's (data/coco.py).
    """
    return multiprocessing.get_context("fork" if sys.platform == "linux" else None)


def pool_process_init() -> None:
    """The initialiser of a pool process: Ctrl-C reaches the whole process group, so the
    parent stops the pool and the process finishes its item instead of printing a
    traceback; and it dies with its parent (die_with_parent)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()


def default_processes() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def map_in_processes(
    fn: Callable[[Sequence[T]], list[R]],
    items: Sequence[T],
    chunk: int = 512,
    processes: int | None = None,
) -> list[R]:
    """fn applied to consecutive chunks of `items`, in order, the results concatenated: in
    this process for a short list (one chunk) or processes <= 1, else in a pool of forked
    processes (process_context, pool_process_init); fn must be a module-level function whose
    work is numpy / PIL only. The first error of a chunk is raised."""
    chunks = [items[i : i + chunk] for i in range(0, len(items), chunk)]
    processes = default_processes() if processes is None else processes
    if len(chunks) <= 1 or processes <= 1:
        return [r for c in chunks for r in fn(c)]
    with process_context().Pool(min(processes, len(chunks)), pool_process_init) as pool:
        return [r for part in pool.imap(fn, chunks) for r in part]
