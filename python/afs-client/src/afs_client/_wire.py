"""What the synchronous and asynchronous clients share: the base URL, request heads,
record bodies, and turning answers into JSON or an `AfsError`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Sequence, TypedDict, Union
from urllib.parse import urlencode, urlsplit

from ._errors import AfsError

if TYPE_CHECKING:
    # Only for type checkers (``typing.Unpack`` is Python 3.11+): with postponed
    # annotations nothing imports it at run time, so the package keeps no dependency.
    from typing_extensions import Unpack

VERSION = "0.1.0"

#: A decoded JSON value.
Json = Any

#: A query parameter's value; ``None`` leaves the parameter out.
Param = Union[str, int, bool, None]


@dataclass(frozen=True)
class Endpoint:
    """Where the server is: scheme, host, port and the path prefix of its URL."""

    scheme: str
    host: str
    port: int
    base_path: str

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host_header}{self.base_path}"


def parse_base_url(base_url: str) -> Endpoint:
    """The endpoint of ``base_url`` (``http://127.0.0.1:8080``, ``https://afs.example/x``)."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AfsError(
            None,
            f"invalid base URL {base_url!r}: expected http://HOST[:PORT] or https://...",
            "invalid_input",
        )
    try:
        port = parts.port
    except ValueError as err:
        raise AfsError(None, f"invalid base URL {base_url!r}: {err}", "invalid_input") from None
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    return Endpoint(parts.scheme, parts.hostname, port, parts.path.rstrip("/"))


def target(endpoint: Endpoint, path: str, params: Optional[Mapping[str, Param]] = None) -> str:
    """The request target: the base path, ``path`` and the given parameters."""
    text = endpoint.base_path + path
    if params:
        pairs = {
            name: ("true" if value else "false") if isinstance(value, bool) else str(value)
            for name, value in params.items()
            if value is not None
        }
        if pairs:
            text += "?" + urlencode(pairs)
    return text


def headers(endpoint: Endpoint, token: Optional[str], body: Optional[bytes]) -> Dict[str, str]:
    """The request's headers (keep-alive is HTTP/1.1's default, so none asks for it)."""
    out = {
        "Host": endpoint.host_header,
        "Accept": "application/json",
        "User-Agent": f"afs-client-python/{VERSION}",
    }
    if body is not None:
        out["Content-Type"] = "application/json"
        out["Content-Length"] = str(len(body))
    if token:
        out["Authorization"] = "Bearer " + token
    return out


def encode(value: Json) -> bytes:
    """``value`` as compact JSON; NaN, infinities and other values JSON cannot carry are
    refused here rather than by the server."""
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as err:
        raise AfsError(None, f"cannot encode the request as JSON: {err}", "invalid_input") from None


class LogFields(TypedDict, total=False):
    """The keyword arguments of every client's ``log`` (`AfsClient.log`,
    `AsyncAfsClient.log`, `BatchLogger.log`) after ``query``, ``response`` and ``model``:
    the optional keys of ``POST /v1/usage``. Declared once here; each ``log`` takes them as
    ``**fields: Unpack[LogFields]``, which type checkers expand to these names and types."""

    messages: Optional[Sequence[Mapping[str, str]]]
    quality_score: Optional[float]
    latency_ms: Optional[float]
    token_count: Optional[int]
    unit: Optional[str]
    expert: Optional[str]
    context_hash: Optional[str]
    timestamp: Union[str, datetime, None]
    feedback: Optional[int]
    feedback_text: Optional[str]


def record(
    query: Optional[str], response: Optional[str], model: str, **fields: Unpack[LogFields]
) -> Dict[str, Json]:
    """A usage record with the keys of ``POST /v1/usage``, leaving out those not given.
    A ``datetime`` timestamp without a time zone is taken as UTC. ``messages`` is the whole
    conversation of a multi-turn call (``{"role", "content"}`` dicts; roles system, user,
    assistant, tool); with it, ``query`` and ``response`` may be ``None`` and the server
    takes the last user turn and the final assistant turn. A keyword that is not a field of
    `LogFields` raises ``TypeError``, as an unknown keyword argument does."""
    unknown = sorted(set(fields) - set(LogFields.__annotations__))
    if unknown:
        raise TypeError(f"log() got an unexpected keyword argument {unknown[0]!r}")
    out: Dict[str, Json] = {"model": model}
    if query is not None:
        out["query"] = query
    if response is not None:
        out["response"] = response
    messages = fields.get("messages")
    if messages is not None:
        out["messages"] = [{"role": m["role"], "content": m["content"]} for m in messages]
    timestamp = fields.get("timestamp")
    if isinstance(timestamp, datetime):
        if timestamp.tzinfo is None:
            timestamp = timestamp.replace(tzinfo=timezone.utc)
        timestamp = timestamp.isoformat()
    optional: Dict[str, Json] = {
        "quality_score": fields.get("quality_score"),
        "latency_ms": fields.get("latency_ms"),
        "token_count": fields.get("token_count"),
        "unit": fields.get("unit"),
        "expert": fields.get("expert"),
        "context_hash": fields.get("context_hash"),
        "timestamp": timestamp,
        "feedback": fields.get("feedback"),
        "feedback_text": fields.get("feedback_text"),
    }
    out.update({key: value for key, value in optional.items() if value is not None})
    return out


def feedback_body(record_id: str, value: Union[int, bool], text: Optional[str]) -> Dict[str, Json]:
    """The body of ``POST /v1/feedback``."""
    body: Dict[str, Json] = {"id": record_id, "value": value}
    if text is not None:
        body["text"] = text
    return body


def answer(status: int, raw: bytes) -> Json:
    """The JSON of a 2xx answer, or the `AfsError` an error answer describes."""
    text = raw.decode("utf-8", "replace")
    try:
        value = json.loads(text) if text else None
    except ValueError:
        value = None
        if 200 <= status < 300:
            raise AfsError(status, f"the answer is not JSON: {text[:200]!r}", "invalid_response") from None
    if 200 <= status < 300:
        return value
    if isinstance(value, dict) and isinstance(value.get("error"), str):
        kind = value.get("kind")
        field = value.get("field")
        raise AfsError(
            status,
            value["error"],
            kind if isinstance(kind, str) else "http",
            field if isinstance(field, str) else None,
        )
    raise AfsError(status, text[:200] or "an error answer without a body", "http")
