"""Child processes of a benchmark: started so they die with it, stopped for sure, CPU accounted."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import signal
import socket
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent() -> None:
    """In the child before exec (Linux): get SIGTERM when the benchmark process dies.

    Covers what `finally` cannot: the benchmark itself being SIGKILLed.
    """
    with contextlib.suppress(OSError, AttributeError, TypeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    """A running child process; `stderr_tail` keeps its last lines for error reports."""

    name: str
    process: asyncio.subprocess.Process
    stderr_tail: deque[str] = field(default_factory=lambda: deque(maxlen=40))
    _drain: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_seconds(self) -> float | None:
        """User + system CPU time used so far (Linux /proc; None elsewhere or after exit)."""
        return process_cpu_seconds(self.pid)

    def describe_exit(self) -> str:
        tail = "".join(self.stderr_tail).rstrip() or "(no output)"
        return f"{self.name} exited with {self.process.returncode}; its last output:\n{tail}"

    async def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait up to `timeout` seconds, then SIGKILL; always reaps the process."""
        try:
            if self.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    self.process.terminate()
                try:
                    await asyncio.wait_for(self.process.wait(), timeout)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        self.process.kill()
                    await self.process.wait()
        finally:
            if self._drain is not None:
                self._drain.cancel()
                await asyncio.gather(self._drain, return_exceptions=True)


async def spawn(
    name: str,
    *args: str,
    stdout_pipe: bool = False,
    env: dict[str, str] | None = None,
    on_stderr: Callable[[str], None] | None = None,
) -> Child:
    """Start `args` with stdin and (optionally) stdout as pipes; stderr is always drained.

    Every stderr line goes to the child's `stderr_tail` and to `on_stderr`. The stdin pipe
    stays open for the child's lifetime: a child may treat EOF on it as "the benchmark is gone".
    The child gets a session of its own, so Ctrl-C in a terminal reaches only the benchmark,
    which then stops its children in order (Child.stop) instead of racing them.
    """
    process = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE if stdout_pipe else asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        start_new_session=True,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )
    child = Child(name, process)
    child._drain = asyncio.create_task(_drain_stderr(child, on_stderr), name=f"{name}-stderr")
    return child


async def _drain_stderr(child: Child, on_line: Callable[[str], None] | None) -> None:
    # Always read: a child blocked on a full stderr pipe would stall the benchmark.
    stream = child.process.stderr
    assert stream is not None
    while raw := await stream.readline():
        line = raw.decode(errors="replace")
        child.stderr_tail.append(line)
        if on_line is not None:
            on_line(line)


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process from /proc/PID/stat (None when unavailable)."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def process_tree_cpu_seconds(pid: int) -> float | None:
    """CPU seconds of a process and all its descendants, live or already reaped.

    For a server that forks workers (Postfix's master): a worker that exits between two
    readings moves from the live sum into its parent's reaped-children time (cutime, cstime),
    so the difference of two readings is what the whole tree used in between.
    """
    stats: dict[int, list[str]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and (fields := _stat_fields(int(proc.name))) is not None:
            stats[int(proc.name)] = fields
    if pid not in stats:
        return None
    children: dict[int, list[int]] = {}
    for child, fields in stats.items():
        children.setdefault(int(fields[1]), []).append(child)
    ticks, todo = 0, [pid]
    while todo:
        member = todo.pop()
        ticks += sum(int(stats[member][i]) for i in (11, 12, 13, 14))  # utime, stime, cutime, cstime
        todo += children.get(member, [])
    return ticks / os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after "(comm)" (which may contain spaces): state, ppid, ... (None if gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on `host` (for servers that cannot be told to pick one)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process in KiB, from /proc/PID/status (empty if gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    values = {}
    for line in status.splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    return values
