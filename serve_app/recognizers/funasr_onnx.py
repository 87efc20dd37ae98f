"""FunASR models run by ONNX Runtime: the torch backend with only the network swapped.

:class:`FunAsrOnnxBackend` is a :class:`~serve_app.recognizers.funasr_backend.FunAsrBackend`
whose ``_infer`` runs the graph FunASR's own exporter writes
(:mod:`serve_app.recognizers.onnx_export`) instead of the module's ``inference``. Everything
else is the torch backend's: option validation, grouping, the lock, empty segments, the
text clean-up; features are FunASR's own (``WavFrontend``: fbank, LFR, CMVN, through the
same ``extract_fbank`` call as ``inference``), and the decode is ``inference``'s greedy
one (Paraformer: argmax over the first ``token_num`` CIF outputs; SenseVoice: CTC argmax,
repeats merged, blanks dropped). It runs inside the same ``BatchedRecognizer``.

Models: ``Paraformer`` and ``SenseVoiceSmall``. Precision ``fp32`` (``model.onnx``) or
``int8`` (``model_quant.onnx``, FunASR's dynamic quantization). What the exported graphs
do not give, and the backend therefore refuses (400 through ``validate_options``):

- word timestamps: the Paraformer graph outputs only ``logits`` and ``token_num``, not
  the CIF weights and peaks the torch path derives its times from (a ``BiCifParaformer``
  graph has them as ``us_alphas``/``us_cif_peak``; not wired up here). Segment times come
  from the VAD as for any model.
- SeACo-Paraformer: its graph takes hotword embeddings from a second graph
  (``model_eb.onnx``); that bias path is not built, so the class is refused at load.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from serve_app.core.text import join_tokens
from serve_app.core.types import RecognitionOptions
from serve_app.recognizers.funasr_backend import (
    PARAFORMER_CLASSES,
    SENSEVOICE_CLASSES,
    FunAsrBackend,
    _normalize_language,
)
from serve_app.recognizers.onnx_export import OnnxExport, export_onnx

logger = logging.getLogger(__name__)

ONNX_PRECISIONS = ("fp32", "int8")
_SUPPORTED_CLASSES = PARAFORMER_CLASSES | SENSEVOICE_CLASSES
# SenseVoice's query embeddings (funasr/models/sense_voice/model.py: lid_dict, textnorm_dict).
_SENSEVOICE_LID = {"auto": 0, "zh": 3, "en": 4, "yue": 7, "ja": 11, "ko": 12, "nospeech": 13}
_SENSEVOICE_TEXTNORM = {"withitn": 14, "woitn": 15}


@dataclasses.dataclass(frozen=True)
class _TokenIds:
    """The special ids the greedy decode drops (copied off the torch module, then freed)."""

    sos: int
    eos: int
    blank: int


class FunAsrOnnxBackend(FunAsrBackend):
    """FunASR ``Paraformer`` / ``SenseVoiceSmall`` run by an ONNX Runtime session.

    The model is loaded with FunASR's loader (for its frontend, tokenizer and the export),
    exported once per weights (cached, see :func:`export_onnx`), and its torch weights are
    dropped once the session exists. One ``InferenceSession`` per instance (per replica),
    ``num_threads`` intra-op threads (None: torch's count, i.e. OMP_NUM_THREADS).
    """

    def __init__(
        self,
        model_ref: str,
        *,
        models_dir: Path | None = None,
        precision: str = "fp32",
        name: str | None = None,
        use_itn: bool = True,
        num_threads: int | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        if precision not in ONNX_PRECISIONS:
            raise ValueError(
                f"runtime onnx takes precision {' or '.join(ONNX_PRECISIONS)}, not {precision!r}"
            )
        # The graphs give no word times (module docstring): declared off, so refused.
        super().__init__(
            model_ref,
            models_dir=models_dir,
            device="cpu",
            name=name,
            use_itn=use_itn,
            word_timestamps=False,
            num_threads=num_threads,
        )
        if self.model_class not in _SUPPORTED_CLASSES:
            raise ValueError(
                f"runtime onnx supports {sorted(_SUPPORTED_CLASSES)}, not {self.model_class} "
                "(SeACo's hotword bias graph is not wired up: use runtime torch)"
            )
        self.precision = precision
        self.runtime = "onnx"
        module: Any = self._loaded.module
        self._ids = _TokenIds(
            sos=int(getattr(module, "sos", -1)),
            eos=int(getattr(module, "eos", -1)),
            blank=int(getattr(module, "blank_id", 0)),
        )
        self.export: OnnxExport = export_onnx(
            self._loaded, int8=precision == "int8", cache_dir=cache_dir
        )
        path = self.export.int8_path if precision == "int8" else self.export.fp32_path
        assert path is not None
        self.session = _session(path, num_threads)
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        # The torch weights are not needed once the graph runs: free them (880 MB for
        # Paraformer-large); frontend and tokenizer stay in ``kwargs``.
        self._loaded = dataclasses.replace(self._loaded, module=torch.nn.Module())
        logger.info("%s runs on ONNX Runtime (%s, %s)", self.name, precision, path)

    # ------------------------------------------------------------ the network

    def _infer(self, audio: Sequence[np.ndarray], options: RecognitionOptions) -> list[dict]:
        speech, speech_lengths = self.features(audio)
        if self.family == "sensevoice":
            return self._sensevoice(speech, speech_lengths, options)
        logits, token_num = self.run_graph(speech, speech_lengths)
        return [
            {"text": self._paraformer_text(logits[i, : int(token_num[i])])}
            for i in range(len(audio))
        ]

    def features(self, audio: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """FunASR's own padded features: (batch, frames, 560) float32 and int32 lengths."""
        from funasr.utils.load_utils import extract_fbank, load_audio_text_image_video

        frontend = self._loaded.kwargs["frontend"]
        data_in = [np.ascontiguousarray(samples, dtype=np.float32) for samples in audio]
        with torch.inference_mode():
            samples = load_audio_text_image_video(data_in, fs=frontend.fs, audio_fs=16_000)
            speech, speech_lengths = extract_fbank(samples, data_type="sound", frontend=frontend)
        return speech.numpy(), speech_lengths.numpy().astype(np.int32)

    def run_graph(
        self, speech: np.ndarray, speech_lengths: np.ndarray, **extra: np.ndarray
    ) -> list[np.ndarray]:
        """One session run: the graph's outputs in its order (Paraformer: log-softmax
        ``logits`` (batch, tokens, vocab) and ``token_num``)."""
        feeds = {"speech": speech, "speech_lengths": speech_lengths, **extra}
        return list(self.session.run(None, feeds))

    def _paraformer_text(self, am_scores: np.ndarray) -> str:
        # Paraformer.inference's greedy path: argmax, special ids dropped, tokens joined.
        ids = [
            int(i)
            for i in am_scores.argmax(axis=-1)
            if i not in (self._ids.sos, self._ids.eos, self._ids.blank)
        ]
        tokenizer = self._loaded.kwargs["tokenizer"]
        tokens = tokenizer.ids2tokens(ids)
        if hasattr(tokenizer, "bpemodel"):
            return str(tokenizer.tokens2text(tokens))
        from funasr.utils.postprocess_utils import sentence_postprocess

        # FunASR's word list joined as the torch backend joins it (it reads the words off
        # FunASR's timestamped output): one text whichever runtime serves the model.
        # FunASR's own untimed text can differ in spacing after a Latin word followed by
        # a token that is neither CJK nor Latin.
        return join_tokens([str(w) for w in sentence_postprocess(tokens)[1]])

    def _sensevoice(
        self, speech: np.ndarray, speech_lengths: np.ndarray, options: RecognitionOptions
    ) -> list[dict]:
        batch = speech.shape[0]
        language = _SENSEVOICE_LID.get(_normalize_language(options.language), 0)
        textnorm = _SENSEVOICE_TEXTNORM["withitn" if self.use_itn else "woitn"]
        ctc_logits, lengths = self.run_graph(
            speech,
            speech_lengths,
            language=np.full(batch, language, dtype=np.int32),
            textnorm=np.full(batch, textnorm, dtype=np.int32),
        )
        tokenizer = self._loaded.kwargs["tokenizer"]
        out = []
        for i in range(batch):
            best = ctc_logits[i, : int(lengths[i])].argmax(axis=-1)
            merged = best[np.insert(best[1:] != best[:-1], 0, True)] if best.size else best
            ids = [int(t) for t in merged if t != self._ids.blank]
            out.append({"text": str(tokenizer.decode(ids))})
        return out


def _session(path: Path, num_threads: int | None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # Unset: torch's count, which honours OMP_NUM_THREADS (a Ray actor's num_cpus) as the
    # torch path does; ONNX Runtime's own default would take every core.
    opts.intra_op_num_threads = num_threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1  # one graph at a time per replica (the lock)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
