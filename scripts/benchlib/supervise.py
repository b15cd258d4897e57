"""Run a command that must not outlive the benchmark: `python supervise.py CMD [ARGS...]`.

For servers that shed the parent-death signal benchlib.processes gives every child (Postfix's
master changes its credentials, which clears it): this process keeps that signal, and stops
the command (SIGTERM, then SIGKILL after a grace period) when it gets SIGTERM/SIGINT itself or
when its stdin reaches EOF (the benchmark is gone). Its exit status is the command's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading

GRACE_SECONDS = 10.0


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python supervise.py CMD [ARGS...]")
    command = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    threading.Thread(target=_set_on_eof, args=(stop,), daemon=True).start()
    while command.poll() is None and not stop.wait(0.2):
        pass
    if command.poll() is None:
        command.terminate()
        try:
            command.wait(GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            command.kill()
            command.wait()
    code = command.returncode
    sys.exit(128 - code if code < 0 else code)  # a shell's way to report "killed by signal N"


def _set_on_eof(stop: threading.Event) -> None:
    with contextlib.suppress(OSError):
        while os.read(sys.stdin.fileno(), 4096):
            pass
    stop.set()


if __name__ == "__main__":
    main()
