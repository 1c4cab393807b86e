"""Measurement helpers shared by training, the audit and the benchmarks (one of each, not one per caller):
a progress bar, a summary of timings, and a peak-memory probe.

The progress bar needs ``rich`` (the [server] extra) and imports it only when called, so the device side can
import this module with numpy alone.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console
    from rich.progress import Progress

__all__ = ["make_progress", "stats", "status_bytes", "PeakMemoryProbe"]


LINE_PREFIX = ""  # put before every logged progress line (a worker process of a parallel audit: "[job 2] ")


def make_progress(transient: bool = False, *, enabled: bool = True, refresh_per_second: float = 10,
                  console: Console | None = None) -> Progress:
    """The progress bar every long step shows: description, bar, done/total, a ``status`` field, elapsed time.

    ``enabled=False`` gives a silent bar with the same API (no ``if bar`` branches in callers). While timing
    something, pass a low ``refresh_per_second``: the redraw thread takes the GIL.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    class LoggedProgress(Progress):
        """Where output is not a terminal (a log file, CI, ``nohup``) a live bar cannot redraw: print one
        plain line per task at most every ``LOG_EVERY_S`` seconds instead, so a two-hour audit shows its
        progress in its log."""

        def update(self, task_id: TaskID, **kwargs: Any) -> None:
            super().update(task_id, **kwargs)
            if self.disable or self.console.is_terminal:
                return
            task = self._tasks[task_id]
            if not task.visible or task.elapsed is None:
                return
            last = task.fields.get("_logged_at", 0.0)
            if task.elapsed - last >= LOG_EVERY_S or task.finished:
                task.fields["_logged_at"] = task.elapsed
                total = f"/{task.total:g}" if task.total is not None else ""
                left = task.time_remaining
                eta = "" if left is None or task.finished else (
                    f", at most ~{left:.0f} s left (the cap)" if task.fields.get("total_is_cap") else
                    f", ~{left:.0f} s left at this rate")
                self.console.print(f"{LINE_PREFIX}{task.description}: {task.completed:g}{total} "
                                   f"{task.fields.get('status', '')} "
                                   f"({task.elapsed:.0f} s{eta})", highlight=False, markup=False, soft_wrap=True)

        def advance(self, task_id: TaskID, advance: float = 1) -> None:
            self.update(task_id, advance=advance)

    return LoggedProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("eta"),
                          TimeRemainingColumn(), transient=transient,
                          disable=not enabled, refresh_per_second=refresh_per_second, console=console)


LOG_EVERY_S = 30.0


def stats(values: Sequence[float]) -> dict[str, float]:
    """p50, p99, mean, min, max and count of a list of timings (or sizes)."""
    arr = np.asarray(values, dtype=np.float64)
    return {"p50": float(np.percentile(arr, 50)), "p99": float(np.percentile(arr, 99)),
            "mean": float(arr.mean()), "min": float(arr.min()), "max": float(arr.max()), "count": int(arr.size)}


def status_bytes(pid: int | str, key: str) -> int | None:
    """A ``kB`` field of ``/proc/PID/status`` (``VmRSS``, ``VmHWM``, ...) in bytes; None where unreadable."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
    return int(m.group(1)) * 1024 if m else None


def _maxrss_bytes() -> int:
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss) if sys.platform == "darwin" else int(rss) * 1024


class PeakMemoryProbe:
    """Additional peak resident memory of one process (this one, or a child by pid) during an operation, per role.

    RSS, not tracemalloc: native allocations (SEAL's memory pool, torch) count too. On Linux the peak (``VmHWM``)
    is reset by writing 5 to ``/proc/PID/clear_refs`` right before the operation, and peak minus the RSS at its
    start is recorded. Where that is impossible the probe records nothing (``get`` returns None), or, with
    ``maxrss_fallback`` for this process, ``ru_maxrss`` deltas (a lower bound: that peak only grows).
    ``pid=None`` is a disabled probe (e.g. for warm-up requests).
    """

    METHOD = ("linux VmHWM reset via /proc/PID/clear_refs: peak RSS during the operation minus RSS at its start "
              "(additional memory the operation needed)")
    MAXRSS_METHOD = "resource.getrusage ru_maxrss delta (lower bound: the process-lifetime peak only grows)"

    def __init__(self, pid: int | str | None = "self", *, maxrss_fallback: bool = False) -> None:
        self.pid = pid
        self.peaks: dict[str, int] = {}
        self.ok = pid is not None and self._reset()
        self.maxrss = maxrss_fallback and not self.ok and pid == "self"
        self.method = self.METHOD if self.ok else (self.MAXRSS_METHOD if self.maxrss else "unavailable")

    def _reset(self) -> bool:
        if self.pid is None:
            return False
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        except OSError:
            return False
        return status_bytes(self.pid, "VmHWM") is not None and status_bytes(self.pid, "VmRSS") is not None

    def rss(self) -> int | None:
        """The process's resident memory now, in bytes."""
        return status_bytes(self.pid, "VmRSS") if self.pid is not None else None

    @contextmanager
    def measure(self, role: str) -> Iterator[None]:
        """Record the operation inside the ``with`` block under ``role`` (the largest of repeated ones)."""
        if self.ok and self._reset():
            base = status_bytes(self.pid, "VmRSS") or 0  # type: ignore[arg-type]  # ok implies a pid
            yield
            peak = status_bytes(self.pid, "VmHWM") or 0  # type: ignore[arg-type]
        elif self.maxrss:
            base = _maxrss_bytes()
            yield
            peak = _maxrss_bytes()
        else:
            yield
            return
        self.peaks[role] = max(self.peaks.get(role, 0), max(peak - base, 0))

    def get(self, role: str) -> int | None:
        """Bytes recorded for ``role``, or None where this probe cannot measure."""
        return self.peaks.get(role) if (self.ok or self.maxrss) else None
