"""What the benchmarks in this folder share: the machine and versions a run was made on, fresh
processes timed with their own peak memory, interleaved repetitions, and the JSON they write.

The scripts import it as a sibling module (`python benchmarks/<script>.py` puts this folder on
sys.path). Timings on a shared machine are noisy, so every benchmark compares its methods within
one run: repetitions are interleaved (round-robin, the order rotated every round, so that no
method always follows the same one), medians are reported, and the load average is recorded at
the start and the end of the run.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# Variables that decide torch's thread count; a benchmark's "defaults" run without them.
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "VAECOMPRESS_THREADS")


def _mem_total_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def machine() -> dict[str, Any]:
    from vaecompress.runinfo import cpu_model

    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "memory_bytes": _mem_total_bytes(),
        "platform": platform.platform(),
    }


def versions() -> dict[str, str]:
    import numpy
    import torch

    import vaecompress

    return {"python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "vaecompress": vaecompress.__version__}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def start_run(benchmark: str, argv: Sequence[str]) -> dict[str, Any]:
    """The header of a results file, opened before any work: what runs, where, from which
    source tree (the git revision of the imported package, "+dirty" when modified)."""
    import vaecompress
    from vaecompress.runinfo import git_revision

    return {
        "benchmark": benchmark,
        "command": f"benchmarks/{benchmark}.py " + " ".join(argv),
        "machine": machine(),
        "versions": versions(),
        "git_revision": git_revision(),
        "source": str(Path(vaecompress.__file__).resolve().parent),
        "load_average_start": load_average(),
        "time_utc_start": _now(),
        "_t0": time.perf_counter(),
    }


def finish_run(run: dict[str, Any]) -> dict[str, Any]:
    """Close the header: load average and time at the end, the run's wall time."""
    t0 = run.pop("_t0")
    run["load_average_end"] = load_average()
    run["time_utc_end"] = _now()
    run["wall_s"] = time.perf_counter() - t0
    return run


# Spawns the command, waits for it and writes [wall_s, wait status, maxrss KiB, cpu s] to
# argv[1]. It runs as `python -S -I`, so it is small: a child's peak RSS (ru_maxrss) starts from
# the memory of the process that spawned it, and a child spawned straight from a benchmark that
# holds torch would report the benchmark's size, not its own.
LAUNCHER = """\
import json, os, sys, time
out, cmd = sys.argv[1], sys.argv[2:]
t0 = time.perf_counter()
pid = os.posix_spawnp(cmd[0], cmd, os.environ)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - t0
with open(out, "w") as f:
    json.dump([wall, status, ru.ru_maxrss, ru.ru_utime + ru.ru_stime], f)
"""


@dataclass
class Proc:
    """One finished process: its wall time from spawn to exit, and the kernel's account of it."""

    wall_s: float
    returncode: int
    maxrss_bytes: int  # peak RSS of the process, or of a child it waited for if larger (Linux)
    cpu_s: float  # user + system time of the process and the children it waited for
    stdout: str
    stderr: str


def run_process(cmd: Sequence[str], *, env: Mapping[str, str] | None = None,
                cwd: str | Path | None = None, timeout_s: float = 1800.0,
                check: bool = True) -> Proc:
    """Run `cmd` in a fresh process (through the small launcher above) and time it from spawn
    to exit; the resource usage is that of this one process (`os.wait4`)."""
    with tempfile.TemporaryDirectory(prefix="bench-proc-") as tmp:
        report = Path(tmp) / "usage.json"
        proc = subprocess.Popen([sys.executable, "-S", "-I", "-c", LAUNCHER, str(report), *cmd],
                                env=dict(env) if env is not None else None, cwd=cwd,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher's session: it and the command
            proc.communicate()
            raise RuntimeError(f"{' '.join(cmd)} ran past {timeout_s:.0f} s") from None
        if not report.is_file():
            raise RuntimeError(f"could not run {' '.join(cmd)}: {stderr.decode()[-500:]}")
        wall, status, maxrss_kib, cpu = json.loads(report.read_text())
    res = Proc(wall, os.waitstatus_to_exitcode(status), maxrss_kib * 1024, cpu,
               stdout.decode(errors="replace"), stderr.decode(errors="replace"))
    if check and res.returncode != 0:
        tail = "\n".join(res.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"{' '.join(cmd)} exited with {res.returncode}:\n{tail}")
    return res


def clean_env(**overrides: str) -> dict[str, str]:
    """This process's environment without the thread-count variables, plus `overrides`."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env.update(overrides)
    return env


def interleave(tasks: Mapping[str, Callable[[], T]], reps: int,
               warmup: int = 1) -> dict[str, list[T]]:
    """Call every task once per round for `warmup` + `reps` rounds, the order rotated each
    round; the warm-up rounds (page cache, first imports) are discarded."""
    names = list(tasks)
    out: dict[str, list[T]] = {n: [] for n in names}
    for r in range(-warmup, reps):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            value = tasks[n]()
            if r >= 0:
                out[n].append(value)
    return out


def summary(samples: Sequence[float]) -> dict[str, Any]:
    """Median, range and quartiles of repeated measurements, with the samples themselves."""
    xs = sorted(samples)
    q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else xs * 3
    return {"median": statistics.median(xs), "min": xs[0], "max": xs[-1], "q1": q1, "q3": q3,
            "n": len(xs), "samples": list(samples)}


def console_script() -> list[str]:
    """How to run the `vaecompress` command: the console script beside this interpreter, else
    `python -m vaecompress.cli`."""
    script = Path(sys.executable).parent / "vaecompress"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "vaecompress.cli"]


def check_same_source(cmd_env: Mapping[str, str] | None = None) -> str:
    """The package a child interpreter imports; refuses a run whose children would time other
    code than the source tree this process imports (say, an editable install elsewhere)."""
    import vaecompress

    probe = run_process([sys.executable, "-c", "import vaecompress; print(vaecompress.__file__)"],
                        env=cmd_env)
    theirs = str(Path(probe.stdout.strip()).resolve())
    ours = str(Path(vaecompress.__file__).resolve())
    if theirs != ours:
        raise RuntimeError(f"child processes import {theirs}, this one {ours}: set PYTHONPATH")
    return ours


def write_json(path: str | Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")
    print(f"wrote {path}")
