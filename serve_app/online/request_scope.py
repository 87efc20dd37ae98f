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
    # The signals the VAD will cut (the channels of ``channels=split``, else 1), each of
    # ``signal_s``: the ticket holds every signal's length until its VAD answer, then
    # only its speech, so a split request keeps the sum of its channels' speech queued.
    signals_left: int = 1
    signal_s: float = 0.0
    speech_found_s: float = 0.0

    def speech_found(self, speech_s: float) -> float:
        """One signal's VAD answer: what the request still costs the recognizer."""
        self.speech_found_s += speech_s
        self.signals_left = max(0, self.signals_left - 1)
        return self.speech_found_s + self.signals_left * self.signal_s


CURRENT: contextvars.ContextVar[RequestScope | None] = contextvars.ContextVar(
    "asr_request_scope", default=None
)
