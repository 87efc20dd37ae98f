"""Per-request diarization: windows -> embeddings -> clusters -> speaker turns -> segments.

Pure functions (numpy and scipy, no model, no Ray), in the order a request runs them:

1. :func:`embedding_windows`: short windows (``window_s``, ``hop_s`` apart) inside each
   speech span; a span shorter than a window is one window of its own length.
2. the caller embeds the windows (any ``SpeakerEmbedder``, usually through the batched
   embedder, so every window of every request is one batch item).
3. :func:`cluster_embeddings`: spectral clustering, the number of speakers from the
   eigengap of a nearest-neighbour graph (or ``num_speakers`` / within ``min_speakers`` ..
   ``max_speakers`` when the client gives them); then a few nearest-centroid passes, and
   clusters with too little talk time folded into their nearest neighbour. At most
   ``max_cluster_windows`` windows are clustered, the rest go to the nearest centroid.
4. :func:`speaker_turns`: every instant of a span belongs to the window whose centre is
   nearest; a majority filter over neighbouring windows and a minimum turn length remove
   one-window flickers.
5. :func:`assign_speakers`: transcript segments get the speaker they overlap most; a
   segment that spans a change is split at word timestamps when it has them, else at the
   turn boundary with its text divided in proportion to time.

:func:`diarize` runs 1-4 with an ``embed`` callable, for the offline job and tests.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from serve_app.config import DiarizationSettings
from serve_app.core.audio import SAMPLE_RATE_HZ
from serve_app.core.errors import AudioTooLongError, InvalidRequestError
from serve_app.core.types import WordTiming

_DEFAULTS = DiarizationSettings()

# Label of the k-th speaker to talk (k from 1), in order of first appearance.
SPEAKER_LABEL = "speaker_{}"


@dataclass(frozen=True)
class DiarizationOptions:
    """Per-request speaker-count hints (all optional); checked on construction."""

    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None

    def __post_init__(self) -> None:
        for name in ("num_speakers", "min_speakers", "max_speakers"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InvalidRequestError(f"{name} must be >= 1, got {value}", param=name)
        low, high = self.min_speakers, self.max_speakers
        if low is not None and high is not None and low > high:
            raise InvalidRequestError(
                f"min_speakers ({low}) is above max_speakers ({high})", param="min_speakers"
            )
        n = self.num_speakers
        if n is not None and ((low is not None and n < low) or (high is not None and n > high)):
            raise InvalidRequestError(
                f"num_speakers ({n}) is outside min_speakers..max_speakers", param="num_speakers"
            )


@dataclass(frozen=True)
class TimeWindow:
    """A stretch of the request's audio, in seconds from its start."""

    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def center_s(self) -> float:
        return 0.5 * (self.start_s + self.end_s)


@dataclass(frozen=True)
class SpeakerTurn:
    start_s: float
    end_s: float
    speaker: str


@dataclass(frozen=True)
class Diarization:
    """One request's result: turns in time order and each speaker's talk time."""

    turns: tuple[SpeakerTurn, ...]
    windows: tuple[TimeWindow, ...] = ()
    window_labels: tuple[int, ...] = ()
    talk_time_s: dict[str, float] = field(default_factory=dict)

    @property
    def speakers(self) -> list[str]:
        return sorted(self.talk_time_s, key=_label_order)


@dataclass(frozen=True)
class SpeakerSegment:
    """A transcript segment with its speaker (times in the audio's time)."""

    start_s: float
    end_s: float
    text: str
    words: tuple[WordTiming, ...]
    speaker: str | None


def _label_order(label: str) -> tuple[int, str]:
    tail = label.rsplit("_", 1)[-1]
    return (int(tail), label) if tail.isdigit() else (1 << 30, label)


# ---------------------------------------------------------------- 1. windows


def speech_spans_s(
    samples: np.ndarray,
    segments_ms: Sequence[tuple[int, int]],
    *,
    min_pause_ms: int = 200,
    depth_db: float = 20.0,
    min_span_ms: int = 100,
) -> list[tuple[float, float]]:
    """The speech inside the service's VAD segments, cut at the pauses inside them.

    The segments the recognizer gets are padded and merged across short gaps (padding
    first: two spans 0.5 s apart become one), so a segment often holds two talkers with a
    pause between them, and a window across that pause embeds both. Cutting at pauses
    (runs of >= ``min_pause_ms`` of 10 ms frames ``depth_db`` under the segment's speech
    level, as :func:`serve_app.core.segmentation.find_pauses_ms` finds them for long cuts)
    keeps windows inside one stretch of speech. Measured with ``scripts/diarization_eval.py
    --vad service``: the speaker count was right on 70 % / 60 % of the 2 / 4 talker files
    without the cut (docs/BENCHMARKS.md, "Diarization").
    """
    from serve_app.core.segmentation import PauseSettings, find_pauses_ms

    settings = PauseSettings(min_pause_ms=min_pause_ms, depth_db=depth_db)
    out: list[tuple[float, float]] = []
    for start_ms, end_ms in segments_ms:
        cursor = start_ms
        for pause_start, pause_end in find_pauses_ms(samples, start_ms, end_ms, settings):
            if pause_start - cursor >= min_span_ms:
                out.append((cursor / 1000, pause_start / 1000))
            cursor = max(cursor, pause_end)
        if end_ms - cursor >= min_span_ms:
            out.append((cursor / 1000, end_ms / 1000))
    return out


def embedding_windows(
    spans_s: Sequence[tuple[float, float]], *, window_s: float, hop_s: float
) -> list[TimeWindow]:
    """Windows of ``window_s`` every ``hop_s`` inside each span, the last one ending at the
    span's end; a span up to ``window_s`` long is one window. Spans never share a window."""
    windows: list[TimeWindow] = []
    for start_s, end_s in spans_s:
        duration_s = end_s - start_s
        if duration_s <= 0:
            continue
        if duration_s <= window_s:
            windows.append(TimeWindow(start_s, end_s))
            continue
        count = 1 + math.ceil((duration_s - window_s) / hop_s - 1e-9)
        # Spread the starts evenly so the last window ends exactly at the span's end.
        step_s = (duration_s - window_s) / (count - 1)
        windows.extend(
            TimeWindow(start_s + i * step_s, start_s + i * step_s + window_s) for i in range(count)
        )
    return windows


def window_audio(samples: np.ndarray, windows: Sequence[TimeWindow]) -> list[np.ndarray]:
    """The samples of each window (views into ``samples``)."""
    out = []
    for window in windows:
        a = max(0, round(window.start_s * SAMPLE_RATE_HZ))
        b = min(len(samples), max(a + 1, round(window.end_s * SAMPLE_RATE_HZ)))
        out.append(samples[a:b])
    return out


# ---------------------------------------------------------------- 2. clusters


def _normalized(embeddings: np.ndarray) -> np.ndarray:
    x = np.asarray(embeddings, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _centroids(x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    return _normalized(np.stack([x[labels == c].mean(axis=0) for c in range(k)]))


def _compact(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 0..k-1 in order of first appearance (windows are in time order)."""
    mapping: dict[int, int] = {}
    for label in labels.tolist():
        mapping.setdefault(label, len(mapping))
    return np.array([mapping[label] for label in labels.tolist()], dtype=np.int64)


def _refine(x: np.ndarray, labels: np.ndarray, passes: int) -> np.ndarray:
    """Nearest-centroid passes: a window that joined the wrong cluster moves to the
    centroid it is closest to."""
    for _ in range(passes):
        k = int(labels.max()) + 1
        if k < 2:
            break
        moved = np.argmax(x @ _centroids(x, labels, k).T, axis=1)
        if np.array_equal(moved, labels) or len(np.unique(moved)) < k:
            break
        labels = moved
    return labels


def _merge_close_centroids(
    x: np.ndarray, labels: np.ndarray, max_distance: float
) -> np.ndarray | None:
    """Merge the two clusters whose centroids are closest, if closer than ``max_distance``
    (cosine distance); ``None`` when no pair is. Centroids average out window noise, so
    this catches one voice split in two."""
    k = int(labels.max()) + 1
    if k < 2:
        return None
    centroids = _centroids(x, labels, k)
    distance = 1.0 - centroids @ centroids.T
    np.fill_diagonal(distance, np.inf)
    a, b = np.unravel_index(int(np.argmin(distance)), distance.shape)
    if distance[a, b] >= max_distance:
        return None
    labels = labels.copy()
    labels[labels == max(a, b)] = min(a, b)
    return _compact(labels)


def _smallest_is_spurious(
    labels: np.ndarray, durations_s: np.ndarray, settings: DiarizationSettings
) -> bool:
    k = int(labels.max()) + 1
    talk_s = np.array([durations_s[labels == c].sum() for c in range(k)])
    smallest_s = float(talk_s.min())
    return smallest_s < settings.min_speaker_s or (
        smallest_s < settings.min_speaker_share * float(talk_s.mean())
    )


def _fold_smallest(x: np.ndarray, labels: np.ndarray, durations_s: np.ndarray) -> np.ndarray:
    """Merge the cluster with least talk time into the cluster nearest to it."""
    k = int(labels.max()) + 1
    talk_s = np.array([durations_s[labels == c].sum() for c in range(k)])
    smallest = int(np.argmin(talk_s))
    centroids = _centroids(x, labels, k)
    similarity = centroids @ centroids[smallest]
    similarity[smallest] = -np.inf
    labels = labels.copy()
    labels[labels == smallest] = int(np.argmax(similarity))
    return _compact(labels)


def _spread_sample(count: int, limit: int) -> np.ndarray:
    """At most ``limit`` indices of ``range(count)``, evenly spread (rows are in time
    order, so every stretch of the request is represented)."""
    if count <= limit:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, limit).round().astype(np.int64))


def _neighbour_graph(similarity: np.ndarray, neighbours: int) -> np.ndarray:
    """Each row's ``neighbours`` most similar other rows as 1, the rest 0, symmetrised:
    the binarised affinity of NME-SC (Park et al., 2019), which keeps a cluster's shape
    and drops the absolute scale of the similarities (that scale is what differs between
    encoders and voices)."""
    n = len(similarity)
    ranked = similarity.copy()
    np.fill_diagonal(ranked, -np.inf)
    top = np.argpartition(-ranked, neighbours - 1, axis=1)[:, :neighbours]
    graph = np.zeros((n, n))
    graph[np.repeat(np.arange(n), neighbours), top.ravel()] = 1.0
    return 0.5 * (graph + graph.T)


def _laplacian(graph: np.ndarray) -> np.ndarray:
    return np.diag(graph.sum(axis=1)) - graph


def _eigengap_count(eigenvalues: np.ndarray, low: int, high: int) -> tuple[int, float]:
    """The count k in ``low..high`` after which the Laplacian's spectrum jumps most, and
    that jump relative to the largest eigenvalue (how clear the count is)."""
    gaps = np.diff(eigenvalues[: high + 1])
    k = low + int(np.argmax(gaps[low - 1 : high]))
    return k, float(gaps[k - 1]) / max(float(eigenvalues[-1]), 1e-12)


def _kmeans(points: np.ndarray, k: int, *, restarts: int = 8) -> np.ndarray:
    """k-means (k-means++ seeds, fixed so a request always gets the same answer); the
    restart with the least inertia wins."""
    from scipy.cluster.vq import kmeans2

    best, best_inertia = np.zeros(len(points), dtype=np.int64), np.inf
    for seed in range(restarts):
        centres, labels = kmeans2(points, k, minit="++", seed=seed)
        inertia = float(((points - centres[labels]) ** 2).sum())
        if inertia < best_inertia and len(np.unique(labels)) == k:
            best, best_inertia = labels.astype(np.int64), inertia
    return best


def spectral_labels(
    x: np.ndarray, low: int, high: int, settings: DiarizationSettings
) -> np.ndarray:
    """Spectral clustering with the count from the eigengap (NME-SC, as NeMo does).

    For each neighbour count p (1 .. ``settings.max_neighbour_share`` of the rows) the
    p-nearest-neighbour graph's Laplacian gives a count (its largest eigengap in
    ``low..high``) and how clear it is; the p with the clearest gap per neighbour wins
    (small p: fine structure; large p: clusters that touch merge). Its Laplacian's first
    k eigenvectors, clustered by k-means, give the labels. ``x``: unit rows.
    """
    from scipy.linalg import eigh, eigvalsh

    n = len(x)
    high = min(high, n - 1)
    if n < 3 or high < 1 or low > high:
        return np.arange(n) if low >= n else np.zeros(n, dtype=np.int64)
    similarity = x @ x.T
    top_p = max(2, min(n - 1, round(settings.max_neighbour_share * n)))
    low_p = min(top_p, max(2, round(settings.min_neighbour_share * n)))
    candidates = np.unique(np.linspace(low_p, top_p, 20).round().astype(np.int64))
    best: tuple[float, int, int] | None = None  # (score, p, k)
    for p in candidates.tolist():
        eigenvalues = eigvalsh(_laplacian(_neighbour_graph(similarity, p)))
        k, gap = _eigengap_count(eigenvalues, max(low, 1), high)
        score = (p / n) / (gap + 1e-10)
        if best is None or score < best[0]:
            best = (score, p, k)
    assert best is not None
    _, p, k = best
    if k == 1:
        return np.zeros(n, dtype=np.int64)
    _, vectors = eigh(_laplacian(_neighbour_graph(similarity, p)), subset_by_index=[0, k - 1])
    return _compact(_kmeans(vectors, k))


def cluster_embeddings(
    embeddings: np.ndarray,
    options: DiarizationOptions = DiarizationOptions(),
    settings: DiarizationSettings = _DEFAULTS,
    *,
    durations_s: Sequence[float] | None = None,
) -> np.ndarray:
    """One speaker index per embedding row (0..k-1, in order of first appearance).

    The count and the clusters come from :func:`spectral_labels` (the eigengap of a
    neighbour graph, within ``num_speakers`` or ``min_speakers`` .. ``max_speakers`` when
    the client gives them); then clusters whose centroids are closer than
    ``settings.merge_centroid_distance`` are merged (one voice split in two), and clusters
    with less talk time than ``settings.min_speaker_s``, or than
    ``settings.min_speaker_share`` of the mean per cluster, are folded into their nearest
    (never below the lower bound). ``durations_s`` (per row) weighs talk time; rows
    shorter than ``settings.min_cluster_window_s`` are placed afterwards, at their
    nearest centroid.

    Bounded for any number of rows: at most ``settings.max_cluster_windows`` rows, evenly
    spread in time, are clustered (memory and time quadratic in that bound, not in the
    request); every other row goes to its nearest centroid (linear).
    """
    x = _normalized(embeddings)
    n = len(x)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    durations = np.ones(n) if durations_s is None else np.asarray(durations_s, dtype=np.float64)
    reliable = np.flatnonzero(durations >= settings.min_cluster_window_s)
    if len(reliable) < 2:
        reliable = np.arange(n)
    core = reliable[_spread_sample(len(reliable), settings.max_cluster_windows)]
    xs = x[core]
    # Talk time of the clustered rows, scaled to stand for every reliable row.
    core_s = durations[core] * (durations[reliable].sum() / durations[core].sum())
    if options.num_speakers is not None:
        low = high = min(options.num_speakers, len(xs))
    else:
        low = min(options.min_speakers or 1, len(xs))
        high = min(options.max_speakers or settings.max_speakers, settings.max_speakers)
    labels = _refine(xs, spectral_labels(xs, low, high, settings), settings.refine_passes)
    while int(labels.max()) + 1 > low:
        merged = _merge_close_centroids(xs, labels, settings.merge_centroid_distance)
        if merged is None:
            break
        labels = merged
    while int(labels.max()) + 1 > low and _smallest_is_spurious(labels, core_s, settings):
        labels = _fold_smallest(xs, labels, core_s)
    while int(labels.max()) + 1 > high:
        labels = _fold_smallest(xs, labels, core_s)
    k = int(labels.max()) + 1
    full = np.argmax(x @ _centroids(xs, labels, k).T, axis=1)
    full[core] = labels
    return _compact(full)


# ---------------------------------------------------------------- 3. turns


def smooth_labels(labels: Sequence[int], groups: Sequence[int], width: int) -> list[int]:
    """Majority filter of ``width`` windows, never across ``groups`` (spans); ties keep the
    window's own label."""
    labels = list(labels)
    if width <= 1:
        return labels
    half = width // 2
    out = list(labels)
    for i, label in enumerate(labels):
        lo, hi = i, i
        while lo > 0 and i - lo < half and groups[lo - 1] == groups[i]:
            lo -= 1
        while hi < len(labels) - 1 and hi - i < half and groups[hi + 1] == groups[i]:
            hi += 1
        votes = Counter(labels[lo : hi + 1])
        winner, count = votes.most_common(1)[0]
        if count > votes[label]:
            out[i] = winner
    return out


def _span_indices(
    windows: Sequence[TimeWindow], spans_s: Sequence[tuple[float, float]]
) -> list[int]:
    """The span holding each window's centre (-1 for none); spans are in time order, so
    a binary search each (linear in the windows, whatever the request's length)."""
    import bisect

    starts = [start_s - 1e-6 for start_s, _ in spans_s]
    out = []
    for window in windows:
        index = bisect.bisect_right(starts, window.center_s) - 1
        inside = index >= 0 and window.center_s <= spans_s[index][1] + 1e-6
        out.append(index if inside else -1)
    return out


def speaker_turns(
    windows: Sequence[TimeWindow],
    labels: Sequence[int],
    spans_s: Sequence[tuple[float, float]],
    settings: DiarizationSettings = _DEFAULTS,
) -> list[SpeakerTurn]:
    """Speaker turns covering the speech spans, from one label per window.

    Inside a span each instant goes to the window whose centre is nearest, so a change
    between two windows falls halfway between their centres.
    """
    if len(windows) != len(labels):
        raise ValueError(f"{len(labels)} labels for {len(windows)} windows")
    groups = _span_indices(windows, spans_s)
    smoothed = smooth_labels(labels, groups, settings.smoothing_windows)
    members_of: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        members_of.setdefault(g, []).append(i)
    pieces: list[tuple[float, float, int, int]] = []  # start, end, label, span
    for span_index, (span_start_s, span_end_s) in enumerate(spans_s):
        members = members_of.get(span_index, [])
        if not members:
            continue
        centers = [windows[i].center_s for i in members]
        cuts = [span_start_s, *((a + b) / 2 for a, b in zip(centers, centers[1:])), span_end_s]
        mine: list[tuple[float, float, int, int]] = []
        for j, i in enumerate(members):
            start_s, end_s = cuts[j], cuts[j + 1]
            if mine and mine[-1][2] == smoothed[i]:
                mine[-1] = (mine[-1][0], end_s, smoothed[i], span_index)
            else:
                mine.append((start_s, end_s, smoothed[i], span_index))
        # Absorbing never crosses a span, so each span is done on its own (bounded work).
        pieces.extend(_absorb_short_turns(mine, settings.min_turn_s))
    return [SpeakerTurn(a, b, SPEAKER_LABEL.format(label + 1)) for a, b, label, _ in pieces]


def _absorb_short_turns(
    pieces: list[tuple[float, float, int, int]], min_turn_s: float
) -> list[tuple[float, float, int, int]]:
    """Give a turn shorter than ``min_turn_s`` to the longer same-span neighbour."""
    changed = True
    while changed:
        changed = False
        for i, (start_s, end_s, _, span) in enumerate(pieces):
            if end_s - start_s >= min_turn_s:
                continue
            neighbours = [
                j for j in (i - 1, i + 1) if 0 <= j < len(pieces) and pieces[j][3] == span
            ]
            if not neighbours:
                continue
            j = max(neighbours, key=lambda j: pieces[j][1] - pieces[j][0])
            label = pieces[j][2]
            pieces[i] = (start_s, end_s, label, span)
            merged: list[tuple[float, float, int, int]] = []
            for piece in pieces:
                if merged and merged[-1][3] == piece[3] and merged[-1][2] == piece[2]:
                    merged[-1] = (merged[-1][0], piece[1], piece[2], piece[3])
                else:
                    merged.append(piece)
            pieces = merged
            changed = True
            break
    return pieces


def talk_time_s(turns: Sequence[SpeakerTurn]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for turn in turns:
        totals[turn.speaker] = totals.get(turn.speaker, 0.0) + turn.end_s - turn.start_s
    return {k: round(v, 3) for k, v in sorted(totals.items(), key=lambda kv: _label_order(kv[0]))}


def check_diarization_size(duration_s: float, settings: DiarizationSettings) -> None:
    """Refuse a diarize request longer than ``settings.max_audio_s`` (a 413, before any
    work): embedding time grows with the audio, so past the bound it is refused, not run."""
    if duration_s > settings.max_audio_s:
        raise AudioTooLongError(
            f"diarization takes at most {settings.max_audio_s:.0f} s of audio "
            f"(speakers.max_audio_s), this request has {duration_s:.0f} s; "
            "split the file or send it without diarize",
            param="diarize",
        )


def turns_from_embeddings(
    windows: Sequence[TimeWindow],
    embeddings: np.ndarray,
    spans_s: Sequence[tuple[float, float]],
    options: DiarizationOptions = DiarizationOptions(),
    settings: DiarizationSettings = _DEFAULTS,
) -> Diarization:
    """Steps 3-4 for windows the caller has embedded (row i is window i)."""
    if len(windows) != len(embeddings):
        raise ValueError(f"{len(embeddings)} embeddings for {len(windows)} windows")
    labels = cluster_embeddings(
        embeddings, options, settings, durations_s=[w.duration_s for w in windows]
    )
    turns = speaker_turns(windows, labels.tolist(), spans_s, settings)
    return Diarization(
        turns=tuple(turns),
        windows=tuple(windows),
        window_labels=tuple(int(v) for v in labels),
        talk_time_s=talk_time_s(turns),
    )


def diarize(
    samples: np.ndarray,
    spans_s: Sequence[tuple[float, float]],
    embed: Callable[[list[np.ndarray]], np.ndarray],
    options: DiarizationOptions = DiarizationOptions(),
    settings: DiarizationSettings = _DEFAULTS,
) -> Diarization:
    """Diarize one recording given its speech spans (seconds) and an embedding function."""
    check_diarization_size(len(samples) / SAMPLE_RATE_HZ, settings)
    windows = embedding_windows(spans_s, window_s=settings.window_s, hop_s=settings.hop_s)
    if not windows:
        return Diarization(turns=())
    embeddings = np.asarray(embed(window_audio(samples, windows)))
    return turns_from_embeddings(windows, embeddings, spans_s, options, settings)
