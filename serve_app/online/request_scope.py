"""Per-request state of the ingress that the stage calls read: a context variable.

``TranscriptionService`` calls the VAD and recognizer stages with their plain arguments
only; the ingress's wrappers around those calls still need the request's deadline and its
admission ticket. asyncio copies the context into every task ``asyncio.gather`` makes, so
setting it once per request reaches every segment call.

It lives in its own module because Ray pickles the ingress class by value, and a
``ContextVar`` cannot be pickled: referenced as a module attribute it is looked up where
the replica runs instead.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

from serve_app.online.admission import AdmissionTicket


@dataclass
class RequestScope:
    deadline_unix_s: float | None
    ticket: AdmissionTicket | None = None
    model: str = ""


CURRENT: contextvars.ContextVar[RequestScope | None] = contextvars.ContextVar(
    "asr_request_scope", default=None
)
