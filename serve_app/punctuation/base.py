"""The punctuator protocol and the batched stage that runs it over many requests.

A *punctuator* knows one model family: it splits text into its word units, encodes them,
and runs one padded forward pass over a list of token windows (``forward``), returning the
mark after each token. :class:`BatchedPunctuator` plans each request's windows
(:mod:`serve_app.punctuation.windows`), runs every window of every request through the
project's one :class:`~serve_app.core.batching.BatchedRunner` (cost = tokens), and maps the
marks back onto each request's segments. No Ray here: the same object serves a Serve
replica and a Ray Data actor.
"""

# ruff: noqa: RUF002  (full-width CJK punctuation is the point here)

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from serve_app.core.batching import BatchedRunner
from serve_app.core.errors import AsrError, RecognitionError
from serve_app.punctuation.windows import (
    DEFAULT_CONTEXT_TOKENS,
    DEFAULT_CORE_TOKENS,
    RequestWords,
    WindowPlan,
    plan_windows,
    punctuate_segments,
    split_request,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PunctuationWindow:
    """One batch item: the token ids of one window of one request's text."""

    token_ids: tuple[int, ...]
    request_id: str | None = None
    # When the request that spawned the window stops waiting (wall clock): a queue drops
    # the window unrun past it (serve_app.online.batch_queue).
    deadline_unix_s: float | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


@runtime_checkable
class Punctuator(Protocol):
    """One punctuation model family. ``forward`` may raise; the runner isolates failures.

    Marks are the model's own characters (CT-Transformer: ``，`` ``。`` ``？`` ``、``); the
    empty string means no mark after that token.
    """

    @property
    def name(self) -> str: ...

    def split_words(self, text: str) -> list[str]:
        """The model's word units of ``text`` (CT-Transformer: CJK chars, ASCII words)."""
        ...

    def encode(self, words: Sequence[str]) -> tuple[int, ...]:
        """One token id per word (unknown words -> the unknown id)."""
        ...

    def forward(self, windows: Sequence[PunctuationWindow]) -> list[tuple[str, ...]]:
        """The mark after each token of each window, all windows as one padded batch."""
        ...

    def warmup(self) -> object: ...


def _num_tokens(window: PunctuationWindow) -> float:
    return float(window.num_tokens)


def _punctuation_error(window: PunctuationWindow, exc: Exception) -> AsrError:
    if isinstance(exc, AsrError):
        return exc
    logger.exception("punctuation failed on a %d-token window", window.num_tokens)
    return RecognitionError(f"punctuation failed: {type(exc).__name__}: {exc}")


class BatchedPunctuator(BatchedRunner[PunctuationWindow, tuple[str, ...], AsrError]):
    """Punctuates many requests' segment texts, their windows packed by padded tokens.

    ``punctuate(requests)`` takes, per request, its stitched segments' texts in time order
    and returns, per request, the punctuated text of each segment (same count, same order;
    times are the caller's and do not change), or the :class:`AsrError` of a window of
    that request that failed alone (other requests are unaffected).
    """

    backend: Punctuator

    def __init__(
        self,
        backend: Punctuator,
        *,
        max_batch_tokens: int,
        max_batch_items: int,
        core_tokens: int = DEFAULT_CORE_TOKENS,
        context_tokens: int = DEFAULT_CONTEXT_TOKENS,
    ) -> None:
        super().__init__(
            backend,
            cost_s=_num_tokens,  # the runner's cost unit, here tokens
            max_forward_cost=float(max_batch_tokens),
            max_batch_items=max_batch_items,
            on_item_error=_punctuation_error,
        )
        self.core_tokens = core_tokens
        self.context_tokens = context_tokens

    @property
    def name(self) -> str:
        return self.backend.name

    def plan_request(self, segment_texts: Sequence[str]) -> tuple[RequestWords, WindowPlan]:
        words = split_request(segment_texts, self.backend.split_words)
        plan = plan_windows(
            len(words.words), core_tokens=self.core_tokens, context_tokens=self.context_tokens
        )
        return words, plan

    def request_windows(
        self,
        segment_texts: Sequence[str],
        *,
        request_id: str | None = None,
        deadline_unix_s: float | None = None,
    ) -> PlannedRequest:
        """One request's words, window plan and the batch items of its windows."""
        words, plan = self.plan_request(segment_texts)
        token_ids = self.backend.encode(words.words)
        windows = tuple(
            PunctuationWindow(token_ids[w.start : w.stop], request_id, deadline_unix_s)
            for w in plan.windows
        )
        return PlannedRequest(words, plan, windows)

    def punctuate(
        self,
        requests: Sequence[Sequence[str]],
        *,
        request_ids: Sequence[str | None] | None = None,
    ) -> list[list[str] | AsrError]:
        planned = [
            self.request_windows(
                texts, request_id=request_ids[r] if request_ids is not None else None
            )
            for r, texts in enumerate(requests)
        ]
        items = [window for request in planned for window in request.windows]
        results = iter(self.run(items))
        return [request.finish([next(results) for _ in request.windows]) for request in planned]


@dataclass(frozen=True)
class PlannedRequest:
    """A request's windows, planned where the model's word splitter and vocabulary are;
    :meth:`finish` maps the windows' marks back onto its segments."""

    words: RequestWords
    plan: WindowPlan
    windows: tuple[PunctuationWindow, ...]

    def finish(self, window_marks: Sequence[tuple[str, ...] | AsrError]) -> list[str] | AsrError:
        """Each segment's punctuated text, or the error of the first window that failed."""
        error = next((m for m in window_marks if isinstance(m, AsrError)), None)
        if error is not None:
            return error
        marks = self.plan.merge([m for m in window_marks if not isinstance(m, AsrError)])
        return punctuate_segments(self.words, marks)
