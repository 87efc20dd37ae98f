"""Write architecture-faithful, RANDOM-WEIGHT FunASR model folders.

The weights are random: every transcript is GIBBERISH TEXT. These folders exist for
throughput measurements and batched-equals-sequential checks only, never for accuracy.

Each folder has the files of the real hub model (``config.yaml``, ``configuration.json``,
``am.mvn``, ``model.pt`` and ``tokens.json`` + ``seg_dict`` or a sentencepiece model) and
loads through the same FunASR loader (``AutoModel.build_model``) as the real one. The model
is even built by that loader here (from the folder before ``model.pt`` exists), so the state
dict always matches what FunASR constructs from the config.

Models (``--models``, default all):

- ``paraformer-large``: ``Paraformer`` as in
  ``iic/speech_paraformer-large_asr_nat-zh-cn-16k-common-vocab8404-pytorch``: SANMEncoder
  512 x 50 blocks, ParaformerSANMDecoder 16 blocks, CifPredictorV2, WavFrontend LFR 7/6 with
  a 560-dim ``am.mvn``, CharTokenizer with 8404 tokens: 220.08 M parameters.
- ``sensevoice-small``: ``SenseVoiceSmall`` as in ``iic/SenseVoiceSmall``:
  SenseVoiceEncoderSmall 512 x 50 blocks + 20 tp blocks, CTC over 25055 sentencepiece
  tokens. The real ``chn_jpn_yue_eng_ko_spectok.bpe.model`` cannot be downloaded, so a
  sentencepiece BPE model with the same size, the same special tokens
  (``<unk>``, ``<s>``, ``</s>``) and the rich tags at the ids SenseVoice's code names
  (``<|zh|>`` 24884, ``<|en|>`` 24885, ``<|yue|>`` 24888, ``<|ja|>`` 24892, ``<|ko|>`` 24896,
  ``<|nospeech|>`` 24992, ``<|HAPPY|>`` 25001 ... ``<|EMO_UNKNOWN|>`` 25009,
  ``<|withitn|>`` 25016, ``<|woitn|>`` 25017) is written from scratch. The other tag ids and
  all ordinary pieces (letters, letter n-grams, CJK characters) are placeholders.
- ``paraformer-tiny``, ``seaco-paraformer-tiny``, ``sensevoice-tiny``: the same classes
  (SeACo with CifPredictorV3 and its bias LSTM / SeACo decoder) at toy size (2 blocks,
  64 dims, about 200 tokens) so tests load them in well under a second.
- ``paraformer-streaming-large``, ``-tiny``: ``ParaformerStreaming`` as in
  ``paraformer-zh-streaming`` (chunked SANM encoder, online frontend, shifted decoder
  memory) at the large model's size and at the tiny size: the live sessions' 2pass
  partials (serve_app/recognizers/funasr_streaming.py), timed and tested.
- ``campplus-random``: the speaker encoder ``CAMPPlus`` as in
  ``iic/speech_campplus_sv_zh-cn_16k-common`` (FunASR's ``cam++``): 80-dim fbank, FCM head,
  D-TDNN blocks of 12/24/16 CAM layers (growth 32, bn_size 4, 128 initial channels),
  statistics pooling and a 192-dim embedding, with the hub's config keys; no tokenizer and
  no ``am.mvn`` (CAM++ mean-normalises its own fbank). Random embeddings: for batched ==
  one-at-a-time checks only, never for telling speakers apart.

- ``ct-punc-large``, ``ct-punc-tiny``: the punctuation model ``CTTransformer`` as in
  ``iic/punc_ct-transformer_cn-en-common-vocab471067-large`` (FunASR's ``ct-punc``):
  word embedding 516, SANMEncoder 516 x 12 blocks (12 heads, 2048 units, kernel 11), a
  6-class head (``<unk>``, ``_`` = none, and the full-width comma, full stop, question
  mark and enumeration comma), CharTokenizer over a 471067-entry ``tokens.json``
  (CJK characters and letter strings standing in for the real words); the tiny one has
  64 dims, 2 blocks and 300 tokens. Their PUNCTUATION IS MEANINGLESS (random marks): for
  batched == one-at-a-time checks and throughput only. The real folder also has a jieba
  user dictionary for Chinese word segmentation; these do not (characters stay single).

Random init is seeded (``--seed``) and adjusted so outputs are not empty: the CIF
predictor's output layer is set so it fires about once per 3 encoder frames (180 ms), and
SenseVoice's CTC head is biased toward blank so about half the frames emit a token.

Why a tool of the package and not a test fixture: shipped configs run on these folders
(``ray_configs/serve_paraformer_large_random_cpu.yaml``,
``batch_paraformer_large_random_cpu.yaml``, ``tuned_cpu_paraformer-large.yaml``), the batch
tuner and the benchmark generate them when missing, and an operator measures throughput
with them where the hub cannot be reached. The tests use the tiny ones as fixtures.

Usage: python -m serve_app.tools.random_models --out DIR [--models a,b] [--seed N]
(the config dicts and tokenizer files: :mod:`serve_app.tools.random_model_files`)
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from serve_app.tools.random_model_files import (
    campplus_config,
    char_token_list,
    configuration_json,
    ct_punc_config,
    paraformer_config,
    paraformer_streaming_config,
    punc_token_list,
    seaco_config,
    seg_dict_lines,
    sensevoice_config,
    sentencepiece_pieces,
    write_am_mvn,
    write_sentencepiece_model,
)

# What the CIF predictor should integrate per encoder frame (60 ms after LFR 6):
# 1/3 fires a token every 180 ms, about the character rate of read Mandarin.
CIF_TARGET_ALPHA = 1.0 / 3.0


# ---------------------------------------------------------------- specs


@dataclass(frozen=True)
class RandomModelSpec:
    """One model folder to write: its config and how to write its tokenizer files."""

    name: str
    config: dict[str, Any]
    write_tokenizer: Callable[[Path], dict[str, Any]]  # writes files, returns file_path_metas
    task: str = "auto-speech-recognition"
    writes_cmvn: bool = True  # am.mvn for WavFrontend's CMVN (not CAM++: it has its own)


def _char_tokenizer_writer(size: int, *, num_cjk: int) -> Callable[[Path], dict[str, Any]]:
    def write(folder: Path) -> dict[str, Any]:
        tokens = char_token_list(size, num_cjk=num_cjk)
        (folder / "tokens.json").write_text(json.dumps(tokens, ensure_ascii=False), "utf-8")
        (folder / "seg_dict").write_text("\n".join(seg_dict_lines(tokens)) + "\n", "utf-8")
        return {"tokenizer_conf": {"token_list": "tokens.json", "seg_dict_file": "seg_dict"}}

    return write


def _punc_tokenizer_writer(size: int, *, num_cjk: int) -> Callable[[Path], dict[str, Any]]:
    def write(folder: Path) -> dict[str, Any]:
        tokens = punc_token_list(size, num_cjk=num_cjk)
        (folder / "tokens.json").write_text(json.dumps(tokens, ensure_ascii=False), "utf-8")
        return {"tokenizer_conf": {"token_list": "tokens.json"}}

    return write


SENSEVOICE_BPE_FILE = "chn_jpn_yue_eng_ko_spectok.bpe.model"


def _sentencepiece_writer(
    size: int, *, first_tag_id: int, num_cjk: int
) -> Callable[[Path], dict[str, Any]]:
    def write(folder: Path) -> dict[str, Any]:
        pieces = sentencepiece_pieces(size, first_tag_id=first_tag_id, num_cjk=num_cjk)
        write_sentencepiece_model(folder / SENSEVOICE_BPE_FILE, pieces)
        return {"tokenizer_conf": {"bpemodel": SENSEVOICE_BPE_FILE}}

    return write


def _specs() -> dict[str, RandomModelSpec]:
    return {
        "paraformer-large": RandomModelSpec(
            "paraformer-large",
            paraformer_config(size=512, heads=4, units=2048, enc=50, dec=16),
            _char_tokenizer_writer(8404, num_cjk=6000),
        ),
        "paraformer-tiny": RandomModelSpec(
            "paraformer-tiny",
            paraformer_config(size=64, heads=4, units=128, enc=2, dec=2),
            _char_tokenizer_writer(200, num_cjk=120),
        ),
        "paraformer-streaming-large": RandomModelSpec(
            "paraformer-streaming-large",
            paraformer_streaming_config(size=512, heads=4, units=2048, enc=50, dec=16),
            _char_tokenizer_writer(8404, num_cjk=6000),
        ),
        "paraformer-streaming-tiny": RandomModelSpec(
            "paraformer-streaming-tiny",
            paraformer_streaming_config(size=64, heads=4, units=128, enc=2, dec=2),
            _char_tokenizer_writer(200, num_cjk=120),
        ),
        "seaco-paraformer-tiny": RandomModelSpec(
            "seaco-paraformer-tiny",
            seaco_config(size=64, heads=4, units=128, enc=2, dec=2, no_bias=198),
            _char_tokenizer_writer(200, num_cjk=120),
        ),
        "sensevoice-small": RandomModelSpec(
            "sensevoice-small",
            sensevoice_config(size=512, heads=4, units=2048, blocks=50, tp_blocks=20),
            _sentencepiece_writer(25055, first_tag_id=24884, num_cjk=8000),
        ),
        "sensevoice-tiny": RandomModelSpec(
            "sensevoice-tiny",
            sensevoice_config(size=64, heads=4, units=128, blocks=2, tp_blocks=1),
            _sentencepiece_writer(200, first_tag_id=160, num_cjk=60),
        ),
        "campplus-random": RandomModelSpec(
            "campplus-random",
            campplus_config(),
            lambda folder: {},
            task="speaker-verification",
            writes_cmvn=False,
        ),
        "ct-punc-large": RandomModelSpec(
            "ct-punc-large",
            ct_punc_config(size=516, heads=12, units=2048, blocks=12),
            _punc_tokenizer_writer(471067, num_cjk=20000),
            task="punctuation",
            writes_cmvn=False,
        ),
        "ct-punc-tiny": RandomModelSpec(
            "ct-punc-tiny",
            ct_punc_config(size=64, heads=4, units=128, blocks=2),
            _punc_tokenizer_writer(300, num_cjk=150),
            task="punctuation",
            writes_cmvn=False,
        ),
    }


MODEL_NAMES = tuple(_specs())


# ---------------------------------------------------------------- building


def _adjust_init(model: Any) -> None:
    """Make random weights produce some text: see the module docstring."""
    import torch

    with torch.no_grad():
        predictor = getattr(model, "predictor", None)
        if predictor is not None and hasattr(predictor, "cif_output"):
            # alpha = sigmoid(w . relu(conv(h)) + b): small w keeps alpha near sigmoid(b).
            predictor.cif_output.weight.mul_(0.1)
            predictor.cif_output.bias.fill_(math.log(CIF_TARGET_ALPHA / (1 - CIF_TARGET_ALPHA)))
            if hasattr(predictor, "cif_output2"):
                predictor.cif_output2.weight.mul_(0.1)
                predictor.cif_output2.bias.fill_(
                    math.log(CIF_TARGET_ALPHA / (1 - CIF_TARGET_ALPHA))
                )
        ctc = getattr(model, "ctc", None)
        if ctc is not None and getattr(model, "decoder", None) is None:
            # CTC-only (SenseVoice): give blank the expected maximum of the other logits,
            # so it wins about half the frames. Logits are ~normal with this std for
            # unit-variance (layer-normed) encoder outputs.
            logits_std = float(ctc.ctc_lo.weight.std()) * math.sqrt(ctc.ctc_lo.in_features)
            ctc.ctc_lo.bias[getattr(model, "blank_id", 0)] = logits_std * _expected_max_normal(
                ctc.ctc_lo.out_features - 1
            )


def _expected_max_normal(count: int) -> float:
    """Expected maximum of ``count`` standard normals (asymptotic formula)."""
    a = math.sqrt(2.0 * math.log(count))
    return a - (math.log(math.log(count)) + math.log(4.0 * math.pi)) / (2.0 * a)


def count_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def write_model(name: str, out_dir: Path, *, seed: int = 0) -> tuple[Path, int]:
    """Write model ``name`` to ``out_dir / name`` (replacing it); return (folder, parameters).

    The folder appears atomically: it is written beside the target and renamed.
    """
    import torch
    from funasr import AutoModel

    spec = _specs()[name]
    dest = out_dir / name
    partial = out_dir / f".{name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)

    file_path_metas = spec.write_tokenizer(partial)
    (partial / "config.yaml").write_text(
        yaml.safe_dump(spec.config, sort_keys=False, allow_unicode=True), "utf-8"
    )
    configuration = configuration_json(
        file_path_metas, task=spec.task, cmvn_file="am.mvn" if spec.writes_cmvn else None
    )
    (partial / "configuration.json").write_text(json.dumps(configuration, indent=2), "utf-8")
    if spec.writes_cmvn:
        write_am_mvn(partial / "am.mvn")

    # Build through FunASR's own loader while model.pt is still missing: it then constructs
    # the model from the config with random init (seeded by `seed`) and loads nothing.
    model, _ = AutoModel.build_model(
        model=str(partial),
        device="cpu",
        disable_update=True,
        seed=seed,
        ncpu=torch.get_num_threads(),
    )
    _adjust_init(model)
    torch.save(model.state_dict(), partial / "model.pt")
    parameters = count_parameters(model)

    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)
    return dest, parameters


def write_models(names: Sequence[str], out_dir: Path, *, seed: int = 0) -> dict[str, Path]:
    """Write several models; return name -> folder."""
    unknown = sorted(set(names) - set(MODEL_NAMES))
    if unknown:
        raise ValueError(f"unknown models {unknown}; choose from {list(MODEL_NAMES)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    return {name: write_model(name, out_dir, seed=seed)[0] for name in names}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write models into")
    parser.add_argument(
        "--models",
        default=",".join(MODEL_NAMES),
        help=f"comma-separated subset of {','.join(MODEL_NAMES)} (default: all)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random-init seed (default 0)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = sorted(set(names) - set(MODEL_NAMES))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {list(MODEL_NAMES)}")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in names:
        started = time.perf_counter()
        folder, parameters = write_model(name, args.out, seed=args.seed)
        size_mb = (folder / "model.pt").stat().st_size / 1e6
        print(
            f"[random-models] {name}: {parameters / 1e6:.2f} M parameters, "
            f"model.pt {size_mb:.0f} MB, {time.perf_counter() - started:.1f} s -> {folder}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
