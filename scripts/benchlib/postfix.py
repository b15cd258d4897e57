"""Postfix as a loopback relay peer: installed from Debian if missing, run from a temporary config.

Nothing under /etc/postfix is changed: main.cf, master.cf, the queue, the data directory and
the log all live in one temporary directory (master.cf starts as a copy of the package's
pristine master.cf.dist, or of /etc/postfix's when that is missing), and the master process
runs in the foreground under the benchmark (`master -c DIR`, supervised), so it is stopped
with it, even when the benchmark is killed (see benchlib.supervise), and the directory is
removed. It
listens only on the loopback port given and relays everything to one host:port (the sink),
without DNS or TLS; the settings are the tested recipe in shared/reference/test-tools.md §2.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchlib.processes import Child, spawn

SBIN = Path("/usr/sbin")
MASTER_CF_SOURCES = (Path("/usr/share/postfix/master.cf.dist"), Path("/etc/postfix/master.cf"))
QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")
# Without it apt-get asks which kind of mail server to set up; "No configuration" writes no
# main.cf, so Postfix's own system instance stays unconfigured and stopped.
DEBCONF_PRESEED = b"postfix postfix/main_mailer_type select No configuration\n"


class PostfixError(RuntimeError):
    """Postfix could not be installed, configured or started."""


async def _run(*args: str, stdin: bytes | None = None, timeout: float = 300.0) -> str:
    """Run a command to completion; its stdout, or PostfixError with its output."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    process = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(stdin), timeout)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    text = output.decode(errors="replace")
    if process.returncode != 0:
        tail = "\n".join(text.splitlines()[-15:])
        raise PostfixError(f"{' '.join(args)} failed ({process.returncode}):\n{tail}")
    return text


def installed() -> bool:
    return all((SBIN / tool).exists() for tool in ("postfix", "postconf", "postsuper"))


async def ensure_installed(log: bool = True) -> None:
    """apt-get install postfix (non-interactively) unless it is there; needs root."""
    if installed():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise PostfixError(
            "Postfix is not installed and cannot be installed from here (needs root and apt-get); "
            "install the Debian package 'postfix', or run with --no-postfix"
        )
    if log:
        print("installing postfix from Debian (apt-get install -y postfix) ...", flush=True)
    await _run("debconf-set-selections", stdin=DEBCONF_PRESEED)
    try:
        await _run("apt-get", "install", "-y", "--no-install-recommends", "postfix")
    except PostfixError:  # stale or missing package lists: update once and try again
        await _run("apt-get", "update")
        await _run("apt-get", "install", "-y", "--no-install-recommends", "postfix")
    if not installed():
        raise PostfixError("apt-get installed postfix, but /usr/sbin/postfix is still missing")


def _main_cf(directory: Path, listen_port: int, relay: tuple[str, int], concurrency: int) -> list[str]:
    relay_host, relay_port = relay
    return [
        "compatibility_level=3.6",
        f"queue_directory={directory / 'queue'}",
        f"data_directory={directory / 'data'}",
        f"maillog_file_prefixes={directory}",  # the default allows only /var and /dev/stdout
        f"maillog_file={directory / 'maillog'}",
        "myhostname=postfix.bench.test",
        "mydomain=bench.test",
        "myorigin=$myhostname",
        "mydestination=",
        "local_recipient_maps=",
        "local_transport=error:local delivery disabled",
        "alias_maps=",
        "alias_database=",
        "inet_interfaces=127.0.0.1",
        "inet_protocols=ipv4",
        "mynetworks=127.0.0.0/8",
        "smtpd_relay_restrictions=permit_mynetworks,reject",
        "smtpd_recipient_restrictions=permit_mynetworks,reject",
        f"relayhost=[{relay_host}]:{relay_port}",
        "smtp_dns_support_level=disabled",
        "smtp_host_lookup=native",
        "smtp_tls_security_level=none",
        "smtpd_tls_security_level=none",
        # Enough processes and connections to the one destination for C clients, as mailnode gets.
        f"default_process_limit={max(100, 4 * concurrency)}",
        f"default_destination_concurrency_limit={max(20, concurrency)}",
        "smtpd_client_connection_count_limit=0",
        "smtpd_client_connection_rate_limit=0",
        "smtpd_client_message_rate_limit=0",
        "in_flow_delay=0",
        # A relay that refused must surface in the log, not wait an hour in the deferred queue.
        "minimal_backoff_time=1s",
        "maximal_backoff_time=5s",
        "queue_run_delay=1s",
    ]


def _lay_out(directory: Path, master_cf: Path) -> None:
    """An empty main.cf, a copy of the packaged master.cf, and directories Postfix can use."""
    directory.chmod(0o755)  # the postfix user reads main.cf and reaches its queue
    for sub in ("queue", "data"):
        (directory / sub).mkdir(mode=0o755, exist_ok=True)
    shutil.chown(directory / "data", "postfix")
    (directory / "main.cf").touch()
    shutil.copyfile(master_cf, directory / "master.cf")


@dataclass
class PostfixRelay:
    """A running Postfix: SMTP on 127.0.0.1:`port`, relaying everything to one host:port."""

    directory: Path  # main.cf, master.cf, queue/, data/, maillog; removed by stop()
    port: int
    version: str
    master: Child

    @property
    def queue_directory(self) -> Path:
        return self.directory / "queue"

    @classmethod
    async def start(
        cls, port: int, relay: tuple[str, int], concurrency: int, timeout: float = 60.0
    ) -> PostfixRelay:
        """Write main.cf/master.cf into a new temporary directory and start the master there."""
        master_cf = next((p for p in MASTER_CF_SOURCES if p.exists()), None)
        if master_cf is None:
            looked = ", ".join(map(str, MASTER_CF_SOURCES))
            raise PostfixError(f"no master.cf to start from (looked for {looked})")
        directory = Path(tempfile.mkdtemp(prefix="bench-postfix-"))
        try:
            return await cls._start_in(directory, port, relay, concurrency, timeout, master_cf)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise

    @classmethod
    async def _start_in(
        cls,
        directory: Path,
        port: int,
        relay: tuple[str, int],
        concurrency: int,
        timeout: float,
        master_cf: Path,
    ) -> PostfixRelay:
        _lay_out(directory, master_cf)
        postconf = (str(SBIN / "postconf"), "-c", str(directory))
        await _run(*postconf, "-e", *_main_cf(directory, port, relay, concurrency))
        await _run(*postconf, "-F", "*/*/chroot = n")  # no copies of /etc files in the queue
        await _run(*postconf, "-MX", "smtp/inet")  # never port 25
        await _run(*postconf, "-M", f"127.0.0.1:{port}/inet=127.0.0.1:{port} inet n - n - - smtpd")
        await _run(str(SBIN / "postfix"), "-c", str(directory), "check")  # makes the queue's subdirectories
        daemons = (await _run(*postconf, "-h", "daemon_directory")).strip()
        version = (await _run(*postconf, "-h", "mail_version")).strip()
        # The master itself, not `postfix start-fg`: that runs it under a shell script, and
        # SIGTERM to the script would leave the master running. Supervised, because the
        # master sheds the parent-death signal (see benchlib.supervise).
        supervise = (sys.executable, str(Path(__file__).with_name("supervise.py")))
        master = await spawn("postfix master", *supervise, f"{daemons}/master", "-c", str(directory))
        relay_ = cls(directory, port, version, master)
        try:
            await relay_._wait_listening(timeout)
        except BaseException:
            await relay_.master.stop()
            raise
        return relay_

    async def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.master.process.returncode is not None:
                raise PostfixError(self.master.describe_exit() + self._log_tail())
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError as exc:
                if time.monotonic() > deadline:
                    problem = f"postfix is not listening on 127.0.0.1:{self.port}"
                    raise PostfixError(problem + self._log_tail()) from exc
                await asyncio.sleep(0.1)
                continue
            writer.close()
            await writer.wait_closed()
            return

    def queued(self) -> int:
        """Messages in Postfix's queue (files under its queue subdirectories)."""
        return sum(sum(len(files) for _, _, files in os.walk(self.queue_directory / name)) for name in QUEUES)

    async def wait_queue_empty(self, timeout: float) -> int:
        """Wait up to `timeout` s for an empty queue; the number of messages left."""
        deadline = time.monotonic() + timeout
        while True:  # Postfix has no "queue empty" notification: poll its queue directories
            left = self.queued()
            if not left or time.monotonic() > deadline:
                return left
            await asyncio.sleep(0.1)

    async def drop_queue(self) -> None:
        """Delete whatever is still queued, so that it cannot arrive during a later phase."""
        await _run(str(SBIN / "postsuper"), "-c", str(self.directory), "-d", "ALL")

    def log_count(self, text: str) -> int:
        """How many lines of Postfix's log contain `text` (e.g. "status=sent")."""
        try:
            with (self.directory / "maillog").open(errors="replace") as log:
                return sum(text in line for line in log)
        except OSError:
            return 0

    def _log_tail(self) -> str:
        try:
            lines = (self.directory / "maillog").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\npostfix log:\n" + "\n".join(lines[-10:])

    async def stop(self) -> None:
        """Stop the master (it takes its children down), then remove the directory."""
        try:
            await self.master.stop(timeout=15)
            await self._wait_children_gone(timeout=10)
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    async def _wait_children_gone(self, timeout: float) -> None:
        # The master's children (smtpd, qmgr, ...) exit on their own once it is gone; their
        # command lines do not name the directory, but their working directory is its queue.
        deadline = time.monotonic() + timeout
        while True:
            if not self._children() or time.monotonic() > deadline:
                return
            await asyncio.sleep(0.1)

    def _children(self) -> list[int]:
        found = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                with contextlib.suppress(OSError):
                    if Path(os.readlink(proc / "cwd")).is_relative_to(self.directory):
                        found.append(int(proc.name))
        return found
