"""py-spy as a sampling profiler of a benchmark's child process, with a short text summary."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

from benchlib.processes import Child, spawn

_SAMPLE = re.compile(r"^(.*) (\d+)$")
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
_ENTRY = re.compile(r"mailnode/(__main__|cli)\.py")  # under every sample of the main thread


def py_spy_path() -> Path:
    return Path(sys.executable).parent / "py-spy"


class PySpyRecording:
    """`py-spy record --format raw` of one process until stop(): collapsed stacks in `output`."""

    def __init__(self, child: Child, output: Path) -> None:
        self._child = child
        self.output = output

    @classmethod
    async def start(cls, pid: int, output: Path, rate: int = 200) -> PySpyRecording:
        args = ["record", "--pid", str(pid), "--rate", str(rate), "--format", "raw"]
        args += ["--threads", "--nonblocking", "--output", str(output)]
        child = await spawn("py-spy", str(py_spy_path()), *args)
        return cls(child, output)

    async def stop(self, timeout: float = 30.0) -> None:
        """SIGINT makes py-spy write its output and exit; kill it if it does not."""
        process = self._child.process
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), timeout)
        await self._child.stop()

    def summary(self, top: int = 12) -> str:
        """Where the samples went: by thread, by leaf function (self), by mailnode function (total)."""
        try:
            lines = self.output.read_text(errors="replace").splitlines()
        except OSError as exc:
            return f"py-spy wrote no profile ({exc.strerror}): {''.join(self._child.stderr_tail)}"
        by_thread: Counter[str] = Counter()
        by_leaf: Counter[str] = Counter()
        by_own_code: Counter[str] = Counter()
        for line in lines:
            match = _SAMPLE.match(line)
            if not match:
                continue
            frames, count = match.group(1).split(";"), int(match.group(2))
            by_thread[frames[0]] += count
            by_leaf[_short(frames[-1])] += count
            for name in {_short(f) for f in frames[1:] if "mailnode/" in f and not _ENTRY.search(f)}:
                by_own_code[name] += count
        total = sum(by_thread.values()) or 1
        parts = [f"{total} samples (active only) in {self.output}"]
        for title, counter in (
            ("by thread", by_thread),
            ("self time by function", by_leaf),
            ("total time by mailnode function", by_own_code),
        ):
            parts.append(f"  {title}:")
            parts += [f"    {100 * c / total:5.1f}%  {name}" for name, c in counter.most_common(top)]
        return "\n".join(parts)


def _short(frame: str) -> str:
    """`function (path/to/file.py:12)` -> `function (file.py)`."""
    match = _FRAME.match(frame)
    if not match:
        return frame
    file = match.group("file")
    marker = file.rfind("mailnode/")
    short = file[marker:] if marker >= 0 else Path(file).name
    return f"{match.group('function')} ({short})"


@contextlib.asynccontextmanager
async def profiling(pid: int, output: Path | None, what: str) -> AsyncIterator[None]:
    """Record `pid` with py-spy during the block when `output` is given; then print a summary."""
    if output is None:
        yield
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    recording = await PySpyRecording.start(pid, output)
    try:
        yield
    finally:
        await recording.stop()
    print(f"py-spy of {what}:\n{recording.summary()}", flush=True)
