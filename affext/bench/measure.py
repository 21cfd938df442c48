"""Time and peak memory of a case's call, on the CPU or CUDA.

Peak memory of a warm call (the case built and run once, freed, built again, then measured;
so one-time costs such as thread pools and library handles are left out): on CUDA
torch.cuda.max_memory_allocated around the call; on the CPU the growth of the process's peak
RSS (VmHWM) over the call in a process of its own, so that earlier allocations cannot hide it.
A `MemoryProbe` is a subprocess (running `serve`) that imports torch and affext once and
forks one child per measured case; the child frees the warm-up's memory (malloc_trim), resets
its peak RSS to its current RSS (/proc/self/clear_refs) and reports the growth and the time of
the measured call. Times come from torch.utils.benchmark.Timer, which synchronises the
accelerator before each reading.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import warnings
from typing import IO, cast

import torch
from torch.utils.benchmark import timer as benchmark_clock

from .cases import Work, build


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_call(work: Work) -> float:
    """Seconds of one call of `work`, read on torch.utils.benchmark's clock, which
    synchronises the accelerator before each reading (the clock torch's Timer uses; the Timer
    itself adds two warm-up calls to every timeit, which a single measured call cannot have)."""
    start = benchmark_clock()
    work()
    return benchmark_clock() - start


def synchronized(work: Work, device: str = "cpu") -> Work:
    """`work` followed by a CUDA synchronisation on a CUDA device, so that a timer that does
    not synchronise (pytest-benchmark's) sees the kernels' time, not their launch."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return work

    def call():
        work()
        torch.cuda.synchronize(dev)

    return call


def time_work(
    work: Work,
    device: str = "cpu",
    repeats: int = 5,
    warmup: int = 1,
    budget_s: float | None = None,
) -> dict:
    """Median and spread of `repeats` timed calls (after `warmup`), in seconds.

    With budget_s, stops early once that much time has been spent (at least one call).
    """
    dev = torch.device(device)
    for _ in range(warmup):
        work()
    _sync(dev)
    times: list[float] = []
    for _ in range(repeats):
        times.append(timed_call(work))
        if budget_s is not None and sum(times) > budget_s:
            break
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "repeats": len(times),
    }


def _status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _peak_rss_bytes() -> int:
    # VmHWM belongs to this process image; ru_maxrss survives exec on Linux, so a child of a
    # big process (pytest after running a dense reference) would start at its parent's peak.
    peak = _status_bytes("VmHWM")
    if peak is not None:
        return peak
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _reset_peak_rss() -> None:
    # "5" resets VmHWM to the current RSS (Linux >= 4.0); a forked child starts with its
    # parent's peak otherwise. Where it is not possible the growth is measured from that peak.
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _release_freed_memory(device: torch.device) -> None:
    # Give freed heap pages back to the system, so that a later call's growth is not hidden
    # by pages the allocator kept (glibc only; elsewhere the probe may under-count a little).
    if device.type == "cuda":
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


def measure_warm_call(name: str, device: str = "cpu", warm_up: bool = True, **params) -> dict:
    """Peak extra memory (bytes, beyond its prepared inputs) and time (s) of a warm call.

    Builds the case and runs it once (one-time costs: thread pools, library handles, lazy
    initialisation), frees it, builds it again and measures one call; warm_up=False measures
    the first call (for calls so long that one-time costs do not matter). CUDA: from the
    allocator's statistics; CPU: the growth of this process's peak RSS, which is meaningful
    only in a process of its own (MemoryProbe).
    """
    dev = torch.device(device)
    if warm_up:
        work = build(name, device, **params)
        work()
        _sync(dev)
        del work
        gc.collect()
        _release_freed_memory(dev)
    work = build(name, device, **params)
    _sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    else:
        _reset_peak_rss()
        base = _peak_rss_bytes()
    seconds = timed_call(work)
    peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else _peak_rss_bytes()
    return {"peak_extra_bytes": peak - base, "seconds": seconds}


class MemoryProbe:
    """Measures CPU cases one call each, in forked children of one prepared subprocess.

    Forking from a process that has imported torch (and run nothing) costs milliseconds where
    a fresh interpreter costs seconds. Use as a context manager; `measure` raises
    RuntimeError when the call fails, runs past its timeout, or its child is killed.
    """

    def __init__(self, threads: int | None = None) -> None:
        self._threads = threads
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "from affext.bench.measure import serve; serve()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        # both are pipes (None only for a stream not redirected)
        self._stdin = cast(IO[str], self._proc.stdin)
        self._stdout = cast(IO[str], self._proc.stdout)

    def measure(
        self, name: str, timeout_s: float | None = None, warm_up: bool = True, **params
    ) -> dict:
        """{"peak_extra_bytes": int, "seconds": float} of one call of a CPU case."""
        if self._proc.poll() is not None:
            raise RuntimeError(f"the memory probe exited with status {self._proc.returncode}")
        request = {
            "case": name,
            "params": params,
            "timeout_s": timeout_s,
            "threads": self._threads,
            "warm_up": warm_up,
        }
        self._stdin.write(json.dumps(request) + "\n")
        self._stdin.flush()
        line = self._stdout.readline()
        if not line:
            raise RuntimeError(
                f"the memory probe exited (status {self._proc.wait()}) while measuring {name}"
            )
        result = json.loads(line)
        if "error" in result:
            raise RuntimeError(f"measuring {name} {params}: {result['error']}")
        return result

    def close(self) -> None:
        if self._proc.poll() is None:
            self._stdin.close()
            self._proc.wait()

    def __enter__(self) -> MemoryProbe:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def measure_call(
    name: str,
    device: str = "cpu",
    timeout_s: float | None = None,
    probe: MemoryProbe | None = None,
    warm_up: bool = True,
    **params,
) -> dict:
    """measure_warm_call where it is meaningful: CUDA in this process; CPU in a child of
    `probe` (one is started for this call if not given), so that nothing allocated here can
    hide the peak. timeout_s applies to the CPU child."""
    if torch.device(device).type == "cuda":
        return measure_warm_call(name, device, warm_up, **params)
    if probe is not None:
        return probe.measure(name, timeout_s=timeout_s, warm_up=warm_up, **params)
    with MemoryProbe() as own:
        return own.measure(name, timeout_s=timeout_s, warm_up=warm_up, **params)


def peak_memory(name: str, device: str = "cpu", timeout_s: float = 600, **params) -> int:
    """Peak extra memory (bytes) of one call of a case, beyond its prepared inputs."""
    return measure_call(name, device, timeout_s=timeout_s, **params)["peak_extra_bytes"]


def quiet_reference_warnings() -> None:
    """Silence the warnings torch's sparse tensors give on every use (the torch-sparse
    references), which would bury a benchmark's output."""
    warnings.filterwarnings(
        "ignore",
        category=UserWarning,
        message="Sparse (CSR tensor support is in beta|invariant checks)",
    )


def _child_failure(status: int, timeout_s: float | None) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGALRM:
            return f"timed out after {timeout_s:g} s"
        if sig == signal.SIGKILL:
            return "killed (SIGKILL: out of memory?)"
        return f"killed by signal {signal.Signals(sig).name}"
    return f"exited with status {os.WEXITSTATUS(status)} without a result"


def serve() -> None:
    """The probe's loop (MemoryProbe runs it in a subprocess): one JSON request a line on
    stdin, one JSON result a line on stdout, each request measured in a forked child."""
    quiet_reference_warnings()
    for line in sys.stdin:
        request = json.loads(line)
        timeout_s = request.get("timeout_s")
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: measure, write the result, leave without cleanup
            os.close(read_end)
            try:
                if request.get("threads"):
                    torch.set_num_threads(request["threads"])
                if timeout_s:
                    signal.setitimer(signal.ITIMER_REAL, timeout_s)  # SIGALRM ends the child
                result = measure_warm_call(
                    request["case"], "cpu", request.get("warm_up", True), **request["params"]
                )
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                result = {"error": f"{type(exc).__name__}: {exc}"}
            os.write(write_end, json.dumps(result).encode())
            os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as f:
            payload = f.read()
        _, status = os.waitpid(pid, 0)
        if not payload:
            payload = json.dumps({"error": _child_failure(status, timeout_s)}).encode()
        sys.stdout.write(payload.decode() + "\n")
        sys.stdout.flush()
