"""ORT-format files rebuilt as ONNX give the outputs of the file run as shipped.

A small graph with what Moonshine's merged decoder has (an ``If`` whose branches read outer
initializers, weights decompressed in the graph, symbolic dimensions, an int attribute, a
tensor attribute) is written in ORT format by ONNX Runtime itself, rebuilt, and both are run
on the same inputs: the outputs must be identical (the same kernels on the same weights;
folding a Cast/Mul of constants computes the same float products once). The real Moonshine
files: the rebuilt sessions must give the shipped sessions' logits (within 1e-4 of their
scale: float sums are reordered by fusion) and the same greedy tokens.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from serve_app.recognizers.ort_format import OrtFormatError, ort_to_onnx
from tests.speech import SENTENCES, requires_espeak, synthesize


def _branch(name: str, scale_name: str) -> onnx.GraphProto:
    """y = x @ (float(weight_q) * scale) + bias: reads three initializers of the outer graph."""
    return helper.make_graph(
        [
            helper.make_node("Cast", ["weight_q"], [f"{name}_w"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [f"{name}_w", scale_name], [f"{name}_ws"]),
            helper.make_node("MatMul", ["x", f"{name}_ws"], [f"{name}_mm"]),
            helper.make_node("Add", [f"{name}_mm", "bias"], [f"{name}_y"]),
        ],
        name,
        [],
        [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, ["batch", 4])],
    )


def _model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.integers(-127, 127, (3, 4)).astype(np.int8), "weight_q"),
        numpy_helper.from_array(np.float32([0.02]), "scale_a"),
        numpy_helper.from_array(np.float32([0.5]), "scale_b"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "bias"),
    ]
    nodes = [
        helper.make_node(
            "If",
            ["flag"],
            ["branch"],
            then_branch=_branch("a", "scale_a"),
            else_branch=_branch("b", "scale_b"),
        ),
        helper.make_node("Softmax", ["branch"], ["probs"], axis=-1),
        helper.make_node(
            "ConstantOfShape",
            ["shape"],
            ["filled"],
            value=numpy_helper.from_array(np.float32([1.5])),
        ),
        helper.make_node("Add", ["probs", "filled"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "test",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, [1]),
            helper.make_tensor_value_info("shape", TensorProto.INT64, [2]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 4])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def _write_ort(model: onnx.ModelProto, path: Path) -> None:
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(path)
    opts.add_session_config_entry("session.save_model_format", "ORT")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _run(model: bytes | str, feeds: dict) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"]).run(None, feeds)


def test_a_rebuilt_graph_gives_the_shipped_files_outputs(tmp_path: Path):
    path = tmp_path / "model.ort"
    _write_ort(_model(), path)
    rebuilt = ort_to_onnx(path)
    onnx.checker.check_model(rebuilt, full_check=True)
    (branchy,) = [n for n in rebuilt.graph.node if n.op_type == "If"]
    assert {a.name for a in branchy.attribute} == {"then_branch", "else_branch"}
    assert [d.dim_param for d in rebuilt.graph.input[0].type.tensor_type.shape.dim] == ["batch", ""]
    x = np.random.default_rng(1).standard_normal((5, 3)).astype(np.float32)
    for flag in (True, False):
        feeds = {"x": x, "flag": np.array([flag]), "shape": np.array([5, 4], np.int64)}
        expected = _run(str(path), feeds)
        np.testing.assert_array_equal(_run(rebuilt.SerializeToString(), feeds)[0], expected[0])


def test_what_it_cannot_rebuild_is_refused(tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        ort_to_onnx(tmp_path / "missing.ort")
    garbage = tmp_path / "garbage.ort"
    garbage.write_bytes(b"\0" * 64)
    with pytest.raises(OrtFormatError):
        ort_to_onnx(garbage)


@requires_espeak
def test_moonshine_rebuilt_gives_the_shipped_logits_and_tokens(models_dir: Path, tmp_path: Path):
    folder = models_dir / "moonshine-base-en"
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    shipped = {
        name: ort.InferenceSession(str(folder / f"{name}.ort"), opts)
        for name in ("encoder_model", "decoder_model_merged")
    }
    rebuilt = {
        name: ort.InferenceSession(ort_to_onnx(folder / f"{name}.ort").SerializeToString(), opts)
        for name in shipped
    }
    audio = synthesize(SENTENCES[0], tmp_path)[None].astype(np.float32)
    results = {}
    for label, sessions in (("shipped", shipped), ("rebuilt", rebuilt)):
        hidden = sessions["encoder_model"].run(None, {"input_values": audio})[0]
        decoder = sessions["decoder_model_merged"]
        past_names = [i.name for i in decoder.get_inputs() if i.name.startswith("past_key")]
        past = {n: np.zeros((1, 8, 0, 52), np.float32) for n in past_names}
        present_names = [o.name for o in decoder.get_outputs()][1:]
        tokens, all_logits, token = [], [], np.array([[1]], np.int64)
        for step in range(8):
            logits, *present = decoder.run(
                None,
                {
                    "input_ids": token,
                    "encoder_hidden_states": hidden,
                    "use_cache_branch": np.array([step > 0]),
                    **past,
                },
            )
            for name, value in zip(present_names, present, strict=True):
                if step == 0 or ".decoder." in name:
                    past[name.replace("present", "past_key_values")] = value
            token = logits[:, -1].argmax(-1)[:, None].astype(np.int64)
            tokens.append(int(token[0, 0]))
            all_logits.append(logits[0, -1])
        results[label] = (hidden, tokens, np.stack(all_logits))
    (h_a, t_a, l_a), (h_b, t_b, l_b) = results["shipped"], results["rebuilt"]
    assert t_a == t_b and 2 not in t_a[:4]  # the same words, and words (not an early </s>)
    assert np.abs(h_a - h_b).max() <= 1e-4 * np.abs(h_a).max()
    assert np.abs(l_a - l_b).max() <= 1e-4 * np.abs(l_a).max()
