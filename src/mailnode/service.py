"""The composition root: builds every part from a validated config, starts and stops them in order.

Start: storage → workers (output handler, housekeeping) → HTTP. Stop: the reverse, with a grace
period in which running attempts may finish; whatever is still leased is handed back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import ssl
import time
from collections.abc import Callable
from pathlib import Path

from aiohttp import web
from sqlalchemy.engine import make_url

from mailnode.api.app import create_app
from mailnode.api.context import AppContext
from mailnode.bus import Bus
from mailnode.config import Config, IngressRoute
from mailnode.core.dkim_keys import canonical_domain
from mailnode.core.exploder import Mode
from mailnode.errors import MailnodeError
from mailnode.metrics import Metrics
from mailnode.platform.bounces import BounceEndpoint, BounceHandler
from mailnode.platform.domain_keys import DomainKeys
from mailnode.platform.engagement import EngagementRecorder
from mailnode.platform.event_outbox import OutboxWorker
from mailnode.platform.link_tracking import MessageTracker
from mailnode.platform.renderer import BatchRenderer
from mailnode.platform.webhooks import WebhookWorker
from mailnode.reload import Reload, plan_reload
from mailnode.router.endpoints import Endpoint, build_endpoint, endpoint_from_spec
from mailnode.router.exploder import Exploder
from mailnode.router.filters import Router, build_chains, load_dkim_keys
from mailnode.router.output_handler import OutputHandler, OutputSettings
from mailnode.router.version_cache import VersionCache
from mailnode.smtp.authcheck import InboundChecker
from mailnode.smtp.mx import MxResolver
from mailnode.smtp.server import SmtpListeners
from mailnode.smtp.tls import ensure_dev_certificate, server_tls_context
from mailnode.storage.batches import TRACKING_KEYS, VERP_KEYS, BatchStore
from mailnode.storage.domains import DomainStore
from mailnode.storage.events import EventHook, EventStore
from mailnode.storage.store import Clock, Store
from mailnode.storage.webhooks import WebhookStore
from mailnode.tasks import TaskSet

log = logging.getLogger(__name__)


def data_dir(config: Config) -> Path:
    """Where mailnode keeps its files: the SQLite database's directory, else ./mailnode-data."""
    url = make_url(config.storage.url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return Path(url.database).parent
    return Path("mailnode-data")


class Service:
    """One running mailnode: storage, output handler, housekeeping and the HTTP API."""

    def __init__(
        self, config: Config, *, clock: Clock = time.time, random_bytes: Callable[[int], bytes] = os.urandom
    ) -> None:
        self.random_bytes = random_bytes
        self.config = config
        self.clock = clock
        self.session_id = secrets.token_hex(8)
        self.store: Store | None = None
        self.output: OutputHandler | None = None
        self.exploder: Exploder | None = None
        self.smtp: SmtpListeners | None = None
        self.http_address: tuple[str, int] | None = None
        self._runner: web.AppRunner | None = None
        self._tasks = TaskSet("service")
        self._router: Router | None = None
        self._endpoints: dict[str, Endpoint] = {}  # ingress routes' endpoints by spec
        self.bus = Bus()
        self.webhook_worker: WebhookWorker | None = None
        self.engagement: EngagementRecorder | None = None
        # This service's own registry: services in one process (tests) never share counters.
        self.metrics = Metrics()

    @property
    def base_url(self) -> str:
        assert self.http_address is not None, "the service is not started"
        host, port = self.http_address
        return f"http://{host}:{port}"

    async def start(self) -> None:
        """Start every part; if one fails, stop what already runs and re-raise."""
        try:
            await self._start()
        except BaseException:
            await self.stop(grace=0)
            raise

    async def _start(self) -> None:
        config = self.config
        store = await Store.open(
            config.storage.url,
            sqlite_synchronous=config.storage.sqlite_synchronous,
            clock=self.clock,
        )
        self.store = store
        self.metrics.store_state.watch(store)
        self.domains = DomainStore(store)
        self.events = EventStore(store)
        engagement = self.engagement = EngagementRecorder(self.events)
        store.add_transition_hook(EventHook(store))
        self.outbox = OutboxWorker(self.events, self.bus, metrics=self.metrics)
        store.on_events(self.outbox.wake)
        self.webhooks = WebhookStore(store, self.random_bytes)
        self.webhook_worker = WebhookWorker(self.webhooks, self.bus, config.webhooks, self.clock)
        self.verp_keys = await BatchStore(store).signing_keyring(VERP_KEYS, lambda: self.random_bytes(32))
        self.tracking_keys = await BatchStore(store).signing_keyring(
            TRACKING_KEYS, lambda: self.random_bytes(32)
        )
        await store.register_session(self.session_id)
        orphans = await store.cancel_orphans(self.session_id, [mode.value for mode in Mode])
        if orphans:
            log.info("cancelled %d SMTP deliveries a stopped process left without their body", orphans)
        versions = VersionCache(poll_interval=config.delivery.poll_interval_seconds)
        store.subscribe(versions)
        self.output = self._output_handler(store)
        store.subscribe(self.output)
        checker = None
        if config.ingress.check_authentication:
            checker = InboundChecker(
                authserv_id=config.smtp_hostname,
                nameservers=[(ns.host, ns.port or 53) for ns in config.dns.nameservers],
                timeout=config.dns.timeout_seconds,
            )
        self.exploder = Exploder(config, store, self.output, self.session_id, checker)
        self._tasks.spawn(self.output.run(), "output-handler")
        self._tasks.spawn(self._housekeeping(store), "housekeeping")
        self._tasks.spawn(self.outbox.run(), "events-outbox")
        self._tasks.spawn(engagement.run(), "engagement")
        self._tasks.spawn(self.webhook_worker.run(), "webhooks")
        self.smtp = await SmtpListeners.start(
            config,
            exploder=self.exploder,
            store=store,
            tls_context=self._tls_context(),
            clock=self.clock,
            metrics=self.metrics,
        )
        batches = BatchStore(store)
        await self._start_http(
            AppContext(
                config,
                store,
                versions,
                domains=self.domains,
                batches=batches,
                admin_token=config.admin_token(),
                random_bytes=self.random_bytes,
                verp_keys=self.verp_keys,
                tracking_keys=self.tracking_keys,
                events=self.events,
                bus=self.bus,
                webhooks=self.webhooks,
                engagement=engagement,
                metrics=self.metrics,
            )
        )
        log.info("mailnode started session=%s http=%s", self.session_id, self.base_url)

    def _tls_context(self) -> ssl.SSLContext:
        """The configured certificate, or a self-signed one for development."""
        tls = self.config.tls
        if tls.cert_file:
            return server_tls_context(tls.cert_file, tls.key_file)
        cert, key = ensure_dev_certificate(data_dir(self.config) / "tls", self.config.smtp_hostname)
        log.info("using a self-signed development certificate cert=%s", cert)
        return server_tls_context(cert, key)

    def _output_handler(self, store: Store) -> OutputHandler:
        config = self.config
        nameservers = [(ns.host, ns.port or 53) for ns in config.dns.nameservers]
        resolver = MxResolver(nameservers, timeout=config.dns.timeout_seconds)
        routes, copies = self._ingress_endpoints(config, store)
        bounces = BounceHandler(
            store, self.events, bounce_domain=config.bounce_domain, verp_keys=lambda: self.verp_keys.keys
        )
        router = Router(
            build_endpoint(config, store, resolver),
            routes,
            copies,
            bounces=(canonical_domain(config.bounce_domain), BounceEndpoint(bounces)),
        )
        self._router = router
        domain_keys = DomainKeys(self.domains, self.clock)
        self.domains.on_keys_changed(domain_keys.invalidate)
        self.domain_keys = domain_keys
        chains = build_chains(config, router, load_dkim_keys(config), domain_keys, self.clock, self.metrics)
        settings = OutputSettings(
            session_id=self.session_id,
            concurrency=config.delivery.concurrency,
            per_destination_concurrency=config.delivery.per_destination_concurrency,
            lease_seconds=config.delivery.lease_seconds,
            poll_interval=config.delivery.poll_interval_seconds,
            hostname=config.hostname,
            postmaster=f"postmaster@{config.hostname}",
        )
        return OutputHandler(
            store,
            chains,
            lambda sender: self.config.retry_policy(sender),  # [retry] may change on reload
            settings,
            new_message_id=lambda: f"{secrets.token_hex(12)}@{config.hostname}",
            renderer=BatchRenderer(
                BatchStore(store),
                self.clock,
                tracker=MessageTracker(self.tracking_keys, self._tracking_base_url, self.random_bytes),
            ),
            metrics=self.metrics,
        )

    def _ingress_endpoints(
        self, config: Config, store: Store
    ) -> tuple[list[tuple[IngressRoute, Endpoint]], dict[IngressRoute, Endpoint]]:
        """The endpoint of each `[[ingress.routes]]` entry and of its copy_to, one per spec.

        A reload keeps the endpoint (and its open connections) of a spec it already had.
        """
        previous, self._endpoints = self._endpoints, {}

        def endpoint(spec: str) -> Endpoint:
            if spec not in self._endpoints:
                self._endpoints[spec] = previous.get(spec) or endpoint_from_spec(spec, config, store)
            return self._endpoints[spec]

        routes = [(route, endpoint(route.endpoint)) for route in config.ingress.routes]
        copies = {route: endpoint(route.copy_to) for route in config.ingress.routes if route.copy_to}
        return routes, copies

    def reload(self, wanted: Config) -> Reload:
        """Apply what can change while running (reload.LIVE) and log what needs a restart.

        Routes, SMTP limits and timeouts, the delivery concurrency, the retry schedule, the
        housekeeping periods and the log level take effect for what starts from now on.
        """
        result = plan_reload(self.config, wanted)
        config = self.config = result.config
        applied = set(result.applied)
        if "log_level" in applied:
            logging.getLogger().setLevel(config.log_level.upper())
        if self.smtp is not None:
            self.smtp.config = config  # read per session and per command
        if self.exploder is not None:
            self.exploder.reconfigure(config)
        if self.output is not None:
            self.output.set_concurrency(config.delivery.concurrency)
        if "ingress.routes" in applied and self._router is not None and self.store is not None:
            self._router.reroute(*self._ingress_endpoints(config, self.store))
        log.info(result.summary())
        if result.needs_restart:
            log.warning("restart mailnode to apply: %s", ", ".join(result.needs_restart))
        return result

    async def reload_signing_keys(self) -> None:
        """Take keys added by `mailnode signing-key rotate` (SIGHUP): new VERP return paths and
        tracking links are signed with them; every older key keeps verifying."""
        assert self.store is not None, "the service is not started"
        batches = BatchStore(self.store)
        for keyring, purpose in ((self.verp_keys, VERP_KEYS), (self.tracking_keys, TRACKING_KEYS)):
            newer = await batches.signing_keyring(purpose, lambda: self.random_bytes(32))
            if newer.current_id != keyring.current_id:
                log.info("signing key reloaded purpose=%s key=%s", purpose, newer.current_id)
            keyring.replace_with(newer)

    def _tracking_base_url(self) -> str:
        """Where tracking links point: [tracking] base_url, else the HTTP listener's address.

        With port 0 (tests) the real port is known only once HTTP listens; links are made
        later, when a delivery is rendered, so the lookup waits until then.
        """
        if self.config.tracking.base_url or self.http_address is None:
            return self.config.tracking_base_url
        return self.base_url

    async def _start_http(self, ctx: AppContext) -> None:
        listen = self.config.http.listen
        self._runner = web.AppRunner(
            create_app(ctx),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=self.config.stop_grace_seconds / 2,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, listen.host, listen.port)
        try:
            await site.start()
        except OSError as exc:
            reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            raise MailnodeError(
                f"http.listen: cannot listen on {listen}: {reason}; "
                "stop what uses it or choose another [http] listen address"
            ) from None
        host, port = self._runner.addresses[0][:2]
        self.http_address = (host, port)

    async def _housekeeping(self, store: Store) -> None:
        storage = self.config.storage
        interval = min(storage.gc_interval_seconds, self.config.delivery.lease_seconds / 3)
        last_gc = 0.0
        while True:
            await asyncio.sleep(interval)
            try:
                await store.heartbeat(self.session_id)
                now = self.clock()
                expired = await store.expire_awaiting_body(now - storage.body_timeout_seconds)
                removed = 0
                if now - last_gc >= storage.gc_interval_seconds:
                    last_gc = now
                    removed = await store.collect_garbage(now - storage.gc_ttl_seconds)
                    ttl = self.config.platform.idempotency_ttl_seconds
                    await BatchStore(store).forget_idempotency_keys(now - ttl)
                    retention = self.config.events.retention_days * 86400
                    removed += await self.events.prune(now - retention)
                    removed += await self.webhooks.prune(now - retention)
                if expired or removed:
                    log.info("housekeeping expired=%d removed=%d", expired, removed)
            except Exception:
                log.exception("housekeeping failed; trying again in %.0f s", interval)

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let running work finish within one `grace` budget, hand the rest back.

        The budget ([stop_grace_seconds] by default) is shared by every stage in turn: open HTTP
        requests, SMTP sessions (whose close may take twice what it is given), running deliveries.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.config.stop_grace_seconds if grace is None else grace)

        def remaining(share: float = 1.0) -> float:
            return max(deadline - loop.time(), 0.0) * share

        if self._runner is not None:  # built with half the configured budget for open requests
            await self._runner.cleanup()
            self._runner = None
        if self.smtp is not None:
            await self.smtp.close(remaining(0.5))
            self.smtp = None
        if self.output is not None:
            await self.output.stop(remaining())
        if self._router is not None:
            await self._router.close()
        await self._tasks.stop()
        if self.engagement is not None:  # the opens and clicks still queued, before the store closes
            await self.engagement.stop()
            self.engagement = None
        if self.webhook_worker is not None:  # its POSTs were cancelled with its task
            await self.webhook_worker.stop()
            self.webhook_worker = None
        if self.store is not None:
            try:
                await self.store.end_session(self.session_id)
            finally:
                await self.store.close()
                self.store = None
        log.info("mailnode stopped session=%s", self.session_id)

    async def run(self, stop: asyncio.Event, *, on_ready: Callable[[Service], None] | None = None) -> None:
        """Start, call `on_ready`, run until `stop` is set, then stop gracefully."""
        await self.start()
        try:
            if on_ready is not None:
                on_ready(self)
            await stop.wait()
        finally:
            await self.stop()
