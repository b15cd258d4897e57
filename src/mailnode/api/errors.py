"""JSON error answers: `{"error": {"code": "...", "message": "...", "field": "..."}}`."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from mailnode.errors import BlobRangeError, ConflictError, NotFoundError, StorageError

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An answer to send back: HTTP status, a machine code, a message for people."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.headers = headers


def bad_request(field: str, message: str) -> ApiError:
    return ApiError(400, "invalid_request", f"{field}: {message}", field=field)


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    error: dict[str, str] = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    return web.Response(
        status=status,
        text=json.dumps({"error": error}),
        content_type="application/json",
        headers=headers,
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Translate errors into JSON answers with honest HTTP codes, once, here."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, field=exc.field, headers=exc.headers)
    except BlobRangeError as exc:
        return error_response(
            416,
            "range_not_satisfiable",
            str(exc),
            headers={"Content-Range": content_range(exc.stored_length, exc.total_length)},
        )
    except NotFoundError as exc:
        return error_response(404, "not_found", str(exc))
    except ConflictError as exc:
        return error_response(409, "conflict", str(exc))
    except StorageError:
        log.exception("storage failure on %s %s", request.method, request.path)
        return error_response(
            503,
            "unavailable",
            "storage is unavailable; try again shortly",
            headers={"Retry-After": "5"},
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)


def content_range(stored: int, total: int | None) -> str:
    """What the server holds, as a Content-Range value (RFC 9110 §14.4)."""
    length = "*" if total is None else str(total)
    return f"bytes 0-{stored - 1}/{length}" if stored else f"bytes */{length}"
