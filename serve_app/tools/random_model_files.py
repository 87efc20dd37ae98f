"""The files of the random-weight FunASR folders (:mod:`serve_app.tools.random_models`).

``config.yaml`` contents per model family (Paraformer, SeACo-Paraformer, SenseVoiceSmall,
CAM++, CT-Transformer) with the hub models' keys, the hub's ``configuration.json``, the
tokenizer vocabularies (``tokens.json`` + ``seg_dict``, a sentencepiece model written from
scratch) and a speech-like ``am.mvn``. Training-only config sections (optim, scheduler,
dataset, train_conf) are left out: no inference path reads them.
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CJK_FIRST = 0x4E00


# ---------------------------------------------------------------- configs


def _frontend_conf() -> dict[str, Any]:
    return {
        "fs": 16000,
        "window": "hamming",
        "n_mels": 80,
        "frame_length": 25,
        "frame_shift": 10,
        "lfr_m": 7,
        "lfr_n": 6,
    }


def _specaug() -> dict[str, Any]:
    return {
        "specaug": "SpecAugLFR",
        "specaug_conf": {
            "apply_time_warp": False,
            "time_warp_window": 5,
            "time_warp_mode": "bicubic",
            "apply_freq_mask": True,
            "freq_mask_width_range": [0, 30],
            "lfr_rate": 6,
            "num_freq_mask": 1,
            "apply_time_mask": True,
            "time_mask_width_range": [0, 12],
            "num_time_mask": 1,
        },
    }


def _sanm_encoder_conf(*, size: int, heads: int, units: int, blocks: int) -> dict[str, Any]:
    return {
        "output_size": size,
        "attention_heads": heads,
        "linear_units": units,
        "num_blocks": blocks,
        "dropout_rate": 0.1,
        "positional_dropout_rate": 0.1,
        "attention_dropout_rate": 0.1,
        "input_layer": "pe",
        "pos_enc_class": "SinusoidalPositionEncoder",
        "normalize_before": True,
        "kernel_size": 11,
        "sanm_shfit": 0,
        "selfattention_layer_type": "sanm",
    }


def _sanm_decoder_conf(*, heads: int, units: int, blocks: int, kernel: int) -> dict[str, Any]:
    return {
        "attention_heads": heads,
        "linear_units": units,
        "num_blocks": blocks,
        "dropout_rate": 0.1,
        "positional_dropout_rate": 0.1,
        "self_attention_dropout_rate": 0.1,
        "src_attention_dropout_rate": 0.1,
        "att_layer_num": blocks,
        "kernel_size": kernel,
        "sanm_shfit": 0,
    }


def paraformer_config(*, size: int, heads: int, units: int, enc: int, dec: int) -> dict:
    """config.yaml of the offline Paraformer (the large model's, at any size)."""
    return {
        "model": "Paraformer",
        "model_conf": {
            "ctc_weight": 0.0,
            "lsm_weight": 0.1,
            "length_normalized_loss": True,
            "predictor_weight": 1.0,
            "predictor_bias": 1,
            "sampling_ratio": 0.75,
        },
        "encoder": "SANMEncoder",
        "encoder_conf": _sanm_encoder_conf(size=size, heads=heads, units=units, blocks=enc),
        "decoder": "ParaformerSANMDecoder",
        "decoder_conf": _sanm_decoder_conf(heads=heads, units=units, blocks=dec, kernel=11),
        "predictor": "CifPredictorV2",
        "predictor_conf": {
            "idim": size,
            "threshold": 1.0,
            "l_order": 1,
            "r_order": 1,
            "tail_threshold": 0.45,
        },
        "frontend": "WavFrontend",
        "frontend_conf": _frontend_conf(),
        **_specaug(),
        "tokenizer": "CharTokenizer",
        "tokenizer_conf": {"unk_symbol": "<unk>", "split_with_space": True},
        "ctc_conf": {
            "dropout_rate": 0.0,
            "ctc_type": "builtin",
            "reduce": True,
            "ignore_nan_grad": True,
        },
        "normalize": None,
    }


def paraformer_streaming_config(*, size: int, heads: int, units: int, enc: int, dec: int) -> dict:
    """config.yaml of the streaming Paraformer (``paraformer-zh-streaming``,
    ``iic/speech_paraformer-large_asr_nat-zh-cn-16k-common-vocab8404-online``): the offline
    one's predictor and decoder (shifted SANM memory, ``sanm_shfit`` 5) over a chunked
    encoder (``SANMEncoderChunkOpt``, chunks of 15 frames with 5 of look-ahead) and the
    online frontend that keeps its fbank state between chunks."""
    config = paraformer_config(size=size, heads=heads, units=units, enc=enc, dec=dec)
    config["model"] = "ParaformerStreaming"
    config["encoder"] = "SANMEncoderChunkOpt"
    config["encoder_conf"].update(
        {
            "input_layer": "pe_online",
            "chunk_size": [12, 15],
            "stride": [8, 10],
            "pad_left": [0, 0],
            "encoder_att_look_back_factor": [4, 4],
            "decoder_att_look_back_factor": [1, 1],
        }
    )
    config["decoder_conf"]["sanm_shfit"] = 5
    config["frontend"] = "WavFrontendOnline"
    return config


def seaco_config(*, size: int, heads: int, units: int, enc: int, dec: int, no_bias: int) -> dict:
    """config.yaml of SeACo-Paraformer: Paraformer + CifPredictorV3 + bias LSTM + SeACo decoder."""
    config = paraformer_config(size=size, heads=heads, units=units, enc=enc, dec=dec)
    config["model"] = "SeacoParaformer"
    config["model_conf"].update(
        {
            "inner_dim": size,  # the bias LSTM reads decoder embeddings: must equal `size`
            "bias_encoder_type": "lstm",
            "bias_encoder_bid": False,
            "seaco_lsm_weight": 0.1,
            "seaco_length_normalized_loss": True,
            "NO_BIAS": no_bias,
            "seaco_weight": 1.0,
        }
    )
    config["seaco_decoder"] = "ParaformerSANMDecoder"
    config["seaco_decoder_conf"] = {
        **_sanm_decoder_conf(heads=heads, units=units // 2, blocks=max(dec // 2, 1), kernel=21),
        "use_output_layer": False,  # hotword_output_layer maps its hidden states to tokens
    }
    config["predictor"] = "CifPredictorV3"
    config["predictor_conf"] = {
        "idim": size,
        "threshold": 1.0,
        "l_order": 1,
        "r_order": 1,
        "tail_threshold": 0.45,
        "smooth_factor2": 0.25,
        "noise_threshold2": 0.01,
        "upsample_times": 3,
        "use_cif1_cnn": False,
        "upsample_type": "cnn_blstm",
    }
    return config


def sensevoice_config(*, size: int, heads: int, units: int, blocks: int, tp_blocks: int) -> dict:
    """config.yaml of SenseVoiceSmall (its bpemodel is named in configuration.json)."""
    encoder_conf = _sanm_encoder_conf(size=size, heads=heads, units=units, blocks=blocks)
    encoder_conf["tp_blocks"] = tp_blocks
    return {
        "encoder": "SenseVoiceEncoderSmall",
        "encoder_conf": encoder_conf,
        "model": "SenseVoiceSmall",
        "model_conf": {"length_normalized_loss": True, "sos": 1, "eos": 2, "ignore_id": -1},
        "tokenizer": "SentencepiecesTokenizer",
        "tokenizer_conf": {"bpemodel": None, "unk_symbol": "<unk>", "split_with_space": True},
        "frontend": "WavFrontend",
        "frontend_conf": {**_frontend_conf(), "cmvn_file": None},
    }


def campplus_config() -> dict:
    """config.yaml of the hub's CAM++ speaker encoder (speech_campplus_sv_zh-cn_16k-common)."""
    return {
        "model": "CAMPPlus",
        "model_conf": {
            "feat_dim": 80,
            "embedding_size": 192,
            "growth_rate": 32,
            "bn_size": 4,
            "init_channels": 128,
            "config_str": "batchnorm-relu",
            "memory_efficient": True,
            "output_level": "segment",
        },
        "frontend": "WavFrontend",
        "frontend_conf": {"fs": 16000},
    }


def ct_punc_config(*, size: int, heads: int, units: int, blocks: int) -> dict:
    """config.yaml of FunASR's CT-Transformer punctuation model (hub alias ``ct-punc``).

    Keys as in ``iic/punc_ct-transformer_cn-en-common-vocab471067-large``: a SANMEncoder over
    word embeddings (``input_size == embed_unit == att_unit``), a linear head over the
    punctuation classes ``<unk>``, ``_`` (no mark) and four full-width marks, a CharTokenizer whose
    ``vocab_size`` the loader takes from ``tokens.json``.
    """
    encoder_conf = _sanm_encoder_conf(size=size, heads=heads, units=units, blocks=blocks)
    encoder_conf["input_size"] = size
    encoder_conf["padding_idx"] = 0
    punc_list = ["<unk>", "_", "\uff0c", "\u3002", "\uff1f", "\u3001"]
    return {
        "model": "CTTransformer",
        "model_conf": {
            "ignore_id": 0,
            "embed_unit": size,
            "att_unit": size,
            "dropout_rate": 0.1,
            "punc_list": punc_list,
            "punc_weight": [1.0] * len(punc_list),
            "sentence_end_id": 3,
        },
        "encoder": "SANMEncoder",
        "encoder_conf": encoder_conf,
        "tokenizer": "CharTokenizer",
        "tokenizer_conf": {"unk_symbol": "<unk>"},
    }


def configuration_json(
    file_path_metas: dict[str, Any],
    *,
    task: str = "auto-speech-recognition",
    cmvn_file: str | None = "am.mvn",
) -> dict[str, Any]:
    """The hub's configuration.json: tells FunASR which files in the folder are which."""
    frontend_metas = {"frontend_conf": {"cmvn_file": cmvn_file}} if cmvn_file else {}
    return {
        "framework": "pytorch",
        "task": task,
        "model": {"type": "funasr"},
        "pipeline": {"type": "funasr-pipeline"},
        "model_name_in_hub": {"ms": "", "hf": ""},
        "file_path_metas": {
            "init_param": "model.pt",
            "config": "config.yaml",
            **file_path_metas,
            **frontend_metas,
        },
    }


# ---------------------------------------------------------------- vocabularies


def _letter_ngrams(count: int) -> list[str]:
    """The first ``count`` lowercase letter strings in length-then-alphabetical order."""
    out: list[str] = []
    length = 1
    while len(out) < count:
        for index in range(26**length):
            chars = []
            for _ in range(length):
                index, rest = divmod(index, 26)
                chars.append(string.ascii_lowercase[rest])
            out.append("".join(reversed(chars)))
            if len(out) == count:
                break
        length += 1
    return out


def char_token_list(size: int, *, num_cjk: int) -> list[str]:
    """Paraformer's tokens.json layout: <blank> <s> </s>, CJK chars, English BPE units, <unk>."""
    num_units = size - 4
    num_english = num_units - num_cjk
    if num_english < 2:
        raise ValueError("vocabulary too small for the requested number of CJK characters")
    cjk = [chr(CJK_FIRST + i) for i in range(num_cjk)]
    # Half whole-word units, half continuation units ("ab@@" joins the next unit).
    stems = _letter_ngrams(num_english // 2 + num_english % 2)
    english = [f"{stem}@@" for stem in stems[: num_english // 2]] + stems
    return ["<blank>", "<s>", "</s>", *cjk, *english, "<unk>"]


def punc_token_list(size: int, *, num_cjk: int) -> list[str]:
    """CT-Transformer's tokens.json layout: <blank> <s> </s>, CJK chars, English words, <unk>."""
    num_english = size - 4 - num_cjk
    if num_english < 1:
        raise ValueError("vocabulary too small for the requested number of CJK characters")
    cjk = [chr(CJK_FIRST + i) for i in range(num_cjk)]
    return ["<blank>", "<s>", "</s>", *cjk, *_letter_ngrams(num_english), "<unk>"]


def seg_dict_lines(tokens: Sequence[str]) -> list[str]:
    """seg_dict maps a word to its units; here every whole unit maps to itself."""
    return [
        f"{token} {token}"
        for token in tokens
        if not token.startswith("<") and not token.endswith("@@")
    ]


SENSEVOICE_KNOWN_TAG_IDS = {
    # The ids SenseVoiceSmall's own code names (lid_int_dict, emo_dict, textnorm_int_dict).
    "<|zh|>": 24884,
    "<|en|>": 24885,
    "<|yue|>": 24888,
    "<|ja|>": 24892,
    "<|ko|>": 24896,
    "<|nospeech|>": 24992,
    "<|HAPPY|>": 25001,
    "<|SAD|>": 25002,
    "<|ANGRY|>": 25003,
    "<|NEUTRAL|>": 25004,
    "<|EMO_UNKNOWN|>": 25009,
    "<|withitn|>": 25016,
    "<|woitn|>": 25017,
}
SENSEVOICE_OTHER_TAGS = [
    "<|Speech|>", "<|BGM|>", "<|Applause|>", "<|Laughter|>", "<|Cry|>", "<|Sneeze|>",
    "<|Breath|>", "<|Cough|>", "<|FEARFUL|>", "<|DISGUSTED|>", "<|SURPRISED|>",
]  # fmt: skip
WHISPER_LANGUAGE_CODES = (
    "de es ru fr pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no th ur hr bg "
    "lt la mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw gl mr pa si "
    "km sn yo so af oc ka be tg sd gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl mg as tt haw "
    "ln ha ba jw su"
).split()


def sentencepiece_pieces(size: int, *, first_tag_id: int, num_cjk: int) -> list[tuple[str, int]]:
    """(piece, type) for a SenseVoice-style sentencepiece vocabulary of exactly ``size``.

    Types are sentencepiece's: 1 normal, 2 unknown, 3 control, 4 user-defined. Tags are
    user-defined pieces from ``first_tag_id`` on (so decoding prints them, as with the real
    model); the known ones sit at their real ids when the vocabulary is the real size.
    """
    specials = [("<unk>", 2), ("<s>", 3), ("</s>", 3)]
    num_tags = size - first_tag_id
    tags: list[str | None] = [None] * num_tags
    if size == 25055:
        for tag, tag_id in SENSEVOICE_KNOWN_TAG_IDS.items():
            tags[tag_id - first_tag_id] = tag
    else:
        known = list(SENSEVOICE_KNOWN_TAG_IDS)
        if len(known) > num_tags:
            raise ValueError("vocabulary too small for SenseVoice's tags")
        tags[: len(known)] = known
    fillers = iter(
        SENSEVOICE_OTHER_TAGS
        + [f"<|{code}|>" for code in WHISPER_LANGUAGE_CODES]
        + [f"<|reserved_{i}|>" for i in range(num_tags)]
    )
    tag_pieces = [tag if tag is not None else next(fillers) for tag in tags]

    num_normal = first_tag_id - len(specials)
    base = (
        ["▁"]
        + list(string.ascii_lowercase + string.ascii_uppercase + string.digits)
        + list(",.?!'-")
        + [chr(CJK_FIRST + i) for i in range(num_cjk)]
    )
    if len(base) > num_normal:
        raise ValueError("vocabulary too small for the base characters")
    ngrams = _letter_ngrams(26 + num_normal)[26:]  # skip single letters: already in base
    normal = (
        base
        + [f"▁{gram}" if i % 2 == 0 else gram for i, gram in enumerate(ngrams)][
            : num_normal - len(base)
        ]
    )
    return specials + [(piece, 1) for piece in normal] + [(tag, 4) for tag in tag_pieces]


def write_sentencepiece_model(path: Path, pieces: Sequence[tuple[str, int]]) -> None:
    """Write a BPE sentencepiece model holding exactly ``pieces`` (no training needed)."""
    from sentencepiece import sentencepiece_model_pb2 as spm_pb2

    proto = spm_pb2.ModelProto()  # type: ignore[attr-defined]  # generated protobuf module
    proto.trainer_spec.model_type = spm_pb2.TrainerSpec.BPE  # type: ignore[attr-defined]
    proto.trainer_spec.vocab_size = len(pieces)
    proto.trainer_spec.unk_id, proto.trainer_spec.bos_id, proto.trainer_spec.eos_id = 0, 1, 2
    proto.trainer_spec.pad_id = -1
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = True
    proto.normalizer_spec.remove_extra_whitespaces = True
    proto.normalizer_spec.escape_whitespaces = True
    for rank, (text, piece_type) in enumerate(pieces):
        piece = proto.pieces.add()
        piece.piece = text
        # BPE merges the pair whose result scores highest: earlier pieces merge first.
        piece.score = 0.0 if piece_type != 1 else -float(rank)
        piece.type = piece_type
    path.write_bytes(proto.SerializeToString())


def write_am_mvn(path: Path, *, n_mels: int = 80, lfr_m: int = 7) -> None:
    """Kaldi-nnet CMVN (<AddShift> = -mean, <Rescale> = 1/std) for ``n_mels * lfr_m`` dims.

    The statistics are a smooth, speech-like guess for log-mel energies of int16-scaled
    audio, repeated for each stacked LFR frame.
    """
    means = [13.0 + 2.0 * math.cos(math.pi * i / n_mels) for i in range(n_mels)] * lfr_m
    stds = [6.0 - 1.5 * i / n_mels for i in range(n_mels)] * lfr_m
    dim = n_mels * lfr_m

    def row(values: Sequence[float]) -> str:
        return " ".join(f"{v:.6f}" for v in values)

    path.write_text(
        "<Nnet>\n"
        f"<Splice> {dim} {dim}\n[ 0 ]\n"
        f"<AddShift> {dim} {dim}\n<LearnRateCoef> 0 [ {row([-m for m in means])} ]\n"
        f"<Rescale> {dim} {dim}\n<LearnRateCoef> 0 [ {row([1.0 / s for s in stds])} ]\n"
        "</Nnet>\n",
        encoding="utf-8",
    )
