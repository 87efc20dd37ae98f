"""FunASR CT-Transformer punctuation backend: one padded forward over many text windows.

FunASR's ``CTTransformer.inference`` takes exactly one text (``assert len(data_in) == 1``)
and walks it in 20-word mini-sentences one forward at a time. Here the windows of many
requests are padded into one ``(batch, tokens)`` id tensor and run through the model's own
``punc_forward(text, text_lengths)``: the SANM encoder masks every position past each row's
length (attention and its FSMN memory block), so a row's marks do not depend on its
batch-mates. The model is loaded by the same loader as the FunASR recognizers (a local
folder, or a hub id such as ``ct-punc`` from the hub's cache or, when online, the hub).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from serve_app.punctuation.base import PunctuationWindow
from serve_app.recognizers.funasr_loader import LoadedFunAsrModel, load_funasr_model

logger = logging.getLogger(__name__)

CT_TRANSFORMER_CLASSES = frozenset({"CTTransformer"})
# Classes that mean "no mark after this token" in CT-Transformer's ``punc_list``.
_NO_MARK = frozenset({"_", "<unk>"})
PADDING_ID = 0


class CtTransformerPunctuator:
    """A loaded CT-Transformer behind the :class:`~serve_app.punctuation.base.Punctuator`
    protocol. Stateless per call: safe to use from several threads with ``torch.no_grad``."""

    def __init__(self, loaded: LoadedFunAsrModel, *, device: str = "cpu") -> None:
        if loaded.model_class not in CT_TRANSFORMER_CLASSES:
            raise ValueError(
                f"{loaded.source} is a {loaded.model_class}, not a CT-Transformer punctuation model"
            )
        module: Any = loaded.module
        self._module = module
        self._tokenizer: Any = loaded.kwargs["tokenizer"]
        self._device = torch.device(device)
        self._source = loaded.source
        self._marks = tuple("" if p in _NO_MARK else str(p) for p in module.punc_list)

    @classmethod
    def load(
        cls,
        model_ref: str,
        *,
        models_dir: Path | None = None,
        device: str = "cpu",
        hub: str = "ms",
        num_threads: int | None = None,
    ) -> CtTransformerPunctuator:
        loaded = load_funasr_model(
            model_ref, models_dir=models_dir, device=device, hub=hub, num_threads=num_threads
        )
        return cls(loaded, device=device)

    @property
    def name(self) -> str:
        return Path(self._source).name

    @property
    def marks(self) -> tuple[str, ...]:
        """The mark of each output class (``""`` = none), in class-id order."""
        return self._marks

    def split_words(self, text: str) -> list[str]:
        from funasr.models.ct_transformer.utils import split_words

        # The real ct-punc has a jieba user dictionary for Chinese words; without one
        # (the random folders) CJK characters stay single words, as in FunASR.
        return list(split_words(text, jieba_usr_dict=self._module.jieba_usr_dict))

    def encode(self, words: Sequence[str]) -> tuple[int, ...]:
        return tuple(int(i) for i in self._tokenizer.tokens2ids(list(words)))

    def logits(self, windows: Sequence[PunctuationWindow]) -> list[torch.Tensor]:
        """Per window, its ``(tokens, classes)`` logits from one padded forward."""
        if not windows:
            return []
        lengths = [w.num_tokens for w in windows]
        ids = torch.full((len(windows), max(lengths)), PADDING_ID, dtype=torch.long)
        for row, window in enumerate(windows):
            ids[row, : window.num_tokens] = torch.tensor(window.token_ids, dtype=torch.long)
        with torch.no_grad():
            y, _ = self._module.punc_forward(
                ids.to(self._device),
                torch.tensor(lengths, dtype=torch.int32, device=self._device),
            )
        return [y[row, :n].float().cpu() for row, n in enumerate(lengths)]

    def forward(self, windows: Sequence[PunctuationWindow]) -> list[tuple[str, ...]]:
        # An empty window cannot go through the encoder (zero-length rows): no marks.
        nonempty = [w for w in windows if w.num_tokens > 0]
        logits = iter(self.logits(nonempty))
        out: list[tuple[str, ...]] = []
        for window in windows:
            if window.num_tokens == 0:
                out.append(())
                continue
            classes = next(logits).argmax(dim=-1).tolist()
            out.append(tuple(self._marks[c] for c in classes))
        return out

    def warmup(self) -> object:
        words = self.split_words("warm up the punctuation model 你好")
        return self.forward([PunctuationWindow(self.encode(words))])
