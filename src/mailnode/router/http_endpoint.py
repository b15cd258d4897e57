"""The `http` endpoint: an application receives mail as HTTP, in the transaction dialect.

mailnode POSTs the envelope as transaction JSON to the receiver's URL, then PUTs the message to
the body URI the receiver names (Location + "/body", as the REST API does). The receiver's
answers become the delivery's SMTP answers:

  2xx                          → 250 (or the `rcpt_response` / `data_response` it returns)
  408, 429, 5xx, timeout, a connection failure → 451: try again later
  other 4xx                    → 554 5.6.0: the receiver refused it for good
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp

from mailnode.core.outcome import AttemptResult
from mailnode.core.response import Response
from mailnode.core.transaction import TransactionRecord
from mailnode.smtp.client import EnvelopeInfo, UpstreamSession

log = logging.getLogger(__name__)

_TEMPORARY_HTTP = frozenset({408, 429})


class HttpEndpoint:
    """Deliveries to one HTTP receiver (an ingress route's `endpoint = "https://…"`)."""

    def __init__(self, url: str, *, timeout: float) -> None:
        self.name = url
        self._url = url
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._http: aiohttp.ClientSession | None = None

    def destination(self, record: TransactionRecord) -> str:
        return urlsplit(self._url).netloc

    def session(self, record: TransactionRecord, info: EnvelopeInfo) -> UpstreamSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=self._timeout)
        return _HttpSession(self._http, self._url, info)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None


class _HttpSession:
    def __init__(self, http: aiohttp.ClientSession, url: str, info: EnvelopeInfo) -> None:
        self._http, self._url, self._info = http, url, info
        self.remote_host: str | None = urlsplit(url).netloc
        self._body_uri: str | None = None
        self._envelope: AttemptResult | None = None

    async def envelope(self) -> AttemptResult:
        payload = {"mail_from": {"m": self._info.mail_from}, "rcpt_to": [{"m": self._info.rcpt_to}]}
        status, headers, body = await self._call(
            "POST", self._url, json.dumps(payload).encode(), "application/json"
        )
        mail = Response(250, "2.1.0 ok")
        rcpt = _answer(status, body, "rcpt_response", "2.1.5 accepted by the HTTP receiver", self.remote_host)
        if rcpt.ok:
            location = headers.get("Location")
            if not location:
                rcpt = Response(451, f"4.5.0 HTTP receiver {self.remote_host} sent no Location for the body")
            else:
                self._body_uri = urljoin(self._url, location).rstrip("/") + "/body"
        self._envelope = AttemptResult(mail=mail, rcpt=rcpt, remote_host=self.remote_host)
        return self._envelope

    async def data(self, message: bytes) -> AttemptResult:
        assert self._envelope is not None, "data() before envelope()"
        if self._body_uri is None:
            return self._envelope
        status, _headers, body = await self._call("PUT", self._body_uri, message, "message/rfc822")
        data = _answer(status, body, "data_response", "2.0.0 accepted by the HTTP receiver", self.remote_host)
        return AttemptResult(self._envelope.mail, self._envelope.rcpt, data, self.remote_host)

    async def close(self) -> None:
        return None

    async def _call(
        self, method: str, url: str, data: bytes, content_type: str
    ) -> tuple[int, dict[str, str], Any]:
        """(HTTP status, headers, JSON body or None); status 0 when no answer came."""
        try:
            async with self._http.request(
                method, url, data=data, headers={"Content-Type": content_type}, allow_redirects=False
            ) as response:
                try:
                    body = await response.json(content_type=None)
                except (ValueError, aiohttp.ContentTypeError):
                    body = None
                return response.status, dict(response.headers), body
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info("HTTP receiver %s failed: %s", self.remote_host, exc.__class__.__name__)
            return 0, {}, None


def _answer(status: int, body: Any, field: str, ok_text: str, remote: str | None) -> Response:
    """The SMTP answer an HTTP receiver gave, by its status and an optional JSON response."""
    if 200 <= status < 300:
        given = body.get(field) if isinstance(body, dict) else None
        if isinstance(given, list) and given:
            given = given[0]
        if isinstance(given, dict) and isinstance(given.get("code"), int) and 200 <= given["code"] <= 599:
            return Response(given["code"], str(given.get("message", "")))
        return Response(250, ok_text)
    if status == 0:
        return Response(451, f"4.4.1 HTTP receiver {remote} did not answer")
    if status in _TEMPORARY_HTTP or status >= 500:
        return Response(451, f"4.4.0 HTTP receiver {remote} answered {status}; try again later")
    return Response(554, f"5.6.0 HTTP receiver {remote} refused the message ({status})")
