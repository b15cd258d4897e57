"""Reading /v1 request bodies and query strings: each problem is a 400 that names its field."""

from __future__ import annotations

import datetime
import json
import math
from typing import Any, TypeVar

from aiohttp import web

from mailnode.api.errors import ApiError, bad_request

T = TypeVar("T")


async def json_object(
    request: web.Request,
    allowed: frozenset[str],
    *,
    nullable: frozenset[str] = frozenset(),
    empty_ok: bool = False,
) -> dict[str, Any]:
    """The body as a JSON object with only `allowed` fields; null only where `nullable` says.

    With `empty_ok`, an empty body counts as `{}` (for POSTs whose fields are all optional).
    """
    raw = await request.read()
    if empty_ok and not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ApiError(400, "invalid_json", "the request body must be a JSON object")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise bad_request(unknown[0], f"unknown field; allowed: {', '.join(sorted(allowed))}")
    for key, item in value.items():
        if item is None and key not in nullable:
            raise bad_request(key, "null is not allowed; leave the field out instead")
    return value


def text_field(body: dict[str, Any], name: str, *, max_length: int, required: bool = True) -> str | None:
    """A string field of 1 to `max_length` characters (None when optional and absent or null)."""
    value = body.get(name)
    if value is None:
        if required:
            raise bad_request(name, "required")
        return None
    if not isinstance(value, str):
        raise bad_request(name, "must be a string")
    if not value.strip():
        raise bad_request(name, "must not be empty")
    if len(value) > max_length:
        raise bad_request(name, f"{len(value)} characters is over the limit of {max_length}")
    return value


def future_time(value: Any, name: str, now: float) -> float:
    """An RFC 3339 time with a zone, or Unix seconds, that lies after `now`."""
    when = _timestamp(value, name)
    if when <= now:
        raise bad_request(name, f"{rfc3339(when)} is in the past; give a time after {rfc3339(now)}")
    return when


# 9999-12-31T23:59:59Z, the last second RFC 3339 can write: a time past it cannot be answered.
MAX_TIMESTAMP = 253402300799.0


def _timestamp(value: Any, name: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not 0 <= value <= MAX_TIMESTAMP:  # also refuses NaN
            raise bad_request(name, f"must be Unix seconds from 0 to {MAX_TIMESTAMP:.0f} (year 9999)")
        return float(value)
    if isinstance(value, str):
        try:
            parsed = datetime.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            return parsed.timestamp()
    raise bad_request(name, 'must be an RFC 3339 time with a zone ("2027-01-31T00:00:00Z") or Unix seconds')


def timestamp_query(request: web.Request, name: str, *, default: T) -> float | T:
    """A time query parameter: RFC 3339 with a zone, or Unix seconds; `default` when absent."""
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        return _timestamp(text, name)
    if not math.isfinite(value):
        raise bad_request(name, "must be a finite number of Unix seconds or an RFC 3339 time")
    return _timestamp(value, name)


def int_query(request: web.Request, name: str, *, default: int, low: int, high: int) -> int:
    """A whole-number query parameter within [low, high]."""
    text = request.query.get(name)
    if text is None:
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise bad_request(name, f"must be a whole number from {low} to {high}")
    return int(text)


def rfc3339(timestamp: float | None) -> str | None:
    """Unix seconds as RFC 3339 UTC text ("2027-01-15T08:00:00Z"), as /v1 answers times."""
    if timestamp is None:
        return None
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.isoformat(timespec="seconds" if timestamp == int(timestamp) else "milliseconds").replace(
        "+00:00", "Z"
    )
