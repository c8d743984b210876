"""The one exception type of the package."""

from __future__ import annotations

from typing import Optional


class AfsError(Exception):
    """Any failure of a call to `afs serve`, raised by every client of this package.

    ``status`` is the HTTP status of an error answer, or ``None`` when no answer came.
    ``kind`` says what went wrong: the server's own kinds (``invalid_input``,
    ``unauthorized``, ``not_found``, ``conflict``, ``payload_too_large``, ``database``, ...,
    see docs/SERVICE.md) for an error answer, and for failures on this side:

    * ``connection``: the server could not be reached, or the connection broke;
    * ``timeout``: no complete answer within the client's ``timeout``;
    * ``invalid_response``: the answer was not HTTP or not the JSON expected;
    * ``invalid_input``: the request could not be encoded (a value JSON cannot carry);
    * ``closed``: the client or logger was closed.

    ``field`` names the request field or query parameter at fault when the server says
    (``quality_score``, ``records[3].quality_score``).
    """

    def __init__(
        self,
        status: Optional[int],
        message: str,
        kind: str,
        field: Optional[str] = None,
    ) -> None:
        prefix = f"HTTP {status}" if status is not None else kind
        super().__init__(f"{prefix}: {message}")
        self.status = status
        self.message = message
        self.kind = kind
        self.field = field
