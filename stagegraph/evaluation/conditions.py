"""The conditions a report's latencies were measured under: how busy the machine was.

A latency says little without the load beside it: the same rerank stage measured 185 ms P50 on a
quiet 2-core machine and 905 ms on one whose 1-minute load average was 3.7. `MachineLoad` records
the machine's CPU count and the 1-minute load average (`os.getloadavg`) when the run began and when
it ended, and `busy` says whether the figures should be compared with a quiet machine's.

The load average counts the tasks running or waiting for a core, this process's own threads
included, so it is not "other work" as it stands: a run that keeps both cores of a 2-core machine
busy for two minutes ends with a load near 2 by itself. So this process's own share of each load is
estimated from its CPU time (`os.times`), as the 1-minute average (an exponential average with a
60 s time constant) of a constant rate would carry it, and only the rest, the other processes'
work, is held against the threshold. The estimate counts CPU time, not threads waiting for a core,
so it errs towards warning. Where the platform has no load average (Windows) the loads are None and
the machine is never called busy.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from pydantic import BaseModel, computed_field

#: Other processes' 1-minute load above this share of the machine's cores marks it busy. At 0.7 runnable
#: tasks per core, a thread that wakes up finds its core taken most of the time, so per-query latencies
#: include waiting for a core and are no longer the stages' own cost (0.7 per core is also the usual
#: sysadmin's line between "has headroom" and "look into it"). The load average is machine-wide, so it
#: is compared with the machine's CPU count, not with the cores this process may use.
BUSY_LOAD_PER_CORE = 0.7
LOAD_WINDOW_S = 60.0  # the time constant of the 1-minute load average


def load_average() -> float | None:
    """The 1-minute load average, or None where the platform has none."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def cpu_seconds() -> float:
    """CPU time (user + system) this process has used so far."""
    times = os.times()
    return times.user + times.system


def process_age_s() -> float | None:
    """Seconds since this process started (Linux's /proc), or None where that cannot be read."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _carried(rate: float, seconds: float) -> float:
    """What `rate` cores kept up for `seconds` adds to a 1-minute load average."""
    return rate * (1.0 - math.exp(-seconds / LOAD_WINDOW_S)) if seconds > 0 else 0.0


class MachineLoad(BaseModel):
    """CPU count and 1-minute load average at the start and the end of a run, with this process's
    own estimated share of each (see the module's notes); `busy` when other work exceeded the threshold."""

    cpus: int  # os.cpu_count(): the load average is machine-wide
    cpus_usable: int | None = None  # the cores this process may run on (its affinity)
    load_start: float | None = None
    load_end: float | None = None
    own_start: float = 0.0  # this process's estimated share of load_start
    own_end: float = 0.0  # ... and of load_end

    @computed_field  # type: ignore[prop-decorator]
    @property
    def busy_above(self) -> float:
        """Other processes' load above which the machine counts as busy."""
        return round(BUSY_LOAD_PER_CORE * self.cpus, 2)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def busy(self) -> bool:
        others = [load - own for load, own in ((self.load_start, self.own_start), (self.load_end, self.own_end))
                  if load is not None]
        return any(x > self.busy_above for x in others)

    def describe(self) -> str:
        """One line: the cores and the two loads, e.g. "2 CPUs, 1-minute load 0.31 at the start, 1.20 at the end"."""
        def fmt(load: float | None, own: float) -> str:
            if load is None:
                return "unknown"
            return f"{load:.2f}" + (f" ({own:.2f} of it this run's own)" if own >= 0.05 else "")

        return f"{self.cpus} CPUs, 1-minute load {fmt(self.load_start, self.own_start)} at the start, " \
               f"{fmt(self.load_end, self.own_end)} at the end"


class LoadProbe:
    """Started when a run starts; `finish()` gives the run's `MachineLoad`."""

    def __init__(self) -> None:
        self._cpu = cpu_seconds()
        self._t = time.monotonic()
        age = process_age_s()
        own = _carried(self._cpu / age, age) if age else 0.0
        self._start = MachineLoad(cpus=os.cpu_count() or 1, cpus_usable=_usable(), load_start=load_average(),
                                  own_start=round(own, 2))

    def finish(self) -> MachineLoad:
        seconds = time.monotonic() - self._t
        rate = (cpu_seconds() - self._cpu) / seconds if seconds > 0 else 0.0
        own = self._start.own_start * math.exp(-seconds / LOAD_WINDOW_S) + _carried(rate, seconds)
        return self._start.model_copy(update={"load_end": load_average(), "own_end": round(own, 2)})


def _usable() -> int | None:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
