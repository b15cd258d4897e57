"""systemd's service notification protocol (sd_notify(3)), without a dependency.

A notification is one datagram of newline-separated `KEY=VALUE` lines sent to the AF_UNIX socket
named by $NOTIFY_SOCKET: a path, or an abstract-namespace name when it starts with "@". Only the
CLI reads the environment; it builds a Notifier with `Notifier.from_environ(os.environ, ...)`.
Without $NOTIFY_SOCKET every call is a no-op, and a failed send is logged, never raised: the mail
server must not stop because its supervisor went away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)


def socket_address(value: str) -> str | None:
    """The address to send to for a $NOTIFY_SOCKET value; None if it is not an AF_UNIX one."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]  # the abstract namespace (unix(7))
    return None  # e.g. systemd 254's "vsock:CID:PORT", for VMs


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of $WATCHDOG_USEC, as sd_watchdog_enabled(3) advises.

    None when the watchdog is off, or $WATCHDOG_PID names another process (it is meant for that one).
    """
    usec = environ.get("WATCHDOG_USEC", "")
    owner = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if owner and owner != str(pid):
        return None
    return int(usec) / 1_000_000 / 2


@dataclass(frozen=True, slots=True)
class Notifier:
    """Tells systemd about this process's lifecycle; every method is a no-op without a socket."""

    address: str | None  # None: not started by systemd with Type=notify
    pid: int
    watchdog_seconds: float | None = None  # None: no watchdog pings

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], pid: int) -> Notifier:
        """The notifier $NOTIFY_SOCKET, $WATCHDOG_USEC and $WATCHDOG_PID describe for process `pid`."""
        value = environ.get("NOTIFY_SOCKET", "")
        if not value:
            return cls(None, pid)
        address = socket_address(value)
        if address is None:
            log.warning("systemd notification disabled: unsupported NOTIFY_SOCKET=%s", value)
            return cls(None, pid)
        return cls(address, pid, watchdog_interval(environ, pid))

    def ready(self, status: str) -> None:
        """Startup is complete: every listener is bound (systemd then starts dependent units)."""
        self.notify(f"READY=1\nSTATUS={_one_line(status)}\nMAINPID={self.pid}")

    def reloading(self) -> None:
        """A reload (SIGHUP) has begun; `ready` again once it is done (systemctl reload waits)."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify(f"RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading the config")

    def stopping(self) -> None:
        """Shutdown has begun (systemctl shows "deactivating" until the process exits)."""
        self.notify("STOPPING=1\nSTATUS=draining")

    def notify(self, state: str) -> bool:
        """Send one notification; False (and a warning logged) if it could not be sent."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)  # a full socket buffer drops the datagram, never stalls the loop
                sock.sendto(state.encode(), self.address)
        except OSError as exc:
            log.warning("systemd notification failed: %s state=%s", exc, state.split("\n", 1)[0])
            return False
        return True

    @contextlib.asynccontextmanager
    async def watchdog(self) -> AsyncIterator[None]:
        """Ping WATCHDOG=1 from the running loop while the block runs (when the watchdog is on)."""
        if self.address is None or self.watchdog_seconds is None:
            yield
            return
        pinger = asyncio.create_task(self._ping(self.watchdog_seconds), name="systemd-watchdog")
        try:
            yield
        finally:
            pinger.cancel()
            await asyncio.gather(pinger, return_exceptions=True)

    async def _ping(self, interval: float) -> None:
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(interval)


def _one_line(text: str) -> str:
    # A newline would start another KEY=VALUE assignment.
    return " ".join(text.split())
