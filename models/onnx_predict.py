"""The keyboard's inference graph: one token in, next-token logits and the new LSTM state out.

``predict.onnx`` is exported from the same ``cell_step`` / ``output_logits`` functions the model trains
with, with the weights baked in as initializers and a dynamic batch. The LSTM state is explicit:
the caller keeps (h, c) between key events and feeds it back, starting from zeros. The tied output layer
is one ``Gemm(h, embedding, out_bias, transB=1)``, so the embedding is stored (and loaded) once.

``predict.int8.onnx`` is the same graph with weight-only int8: every weight matrix is stored as int8 with
one fp32 scale per output channel (per row of the tied embedding, per column of the gate and projection
matrices) and read through a ``DequantizeLinear``. With the session config entry
``session.disable_quant_qdq = "1"`` (``INT8_SESSION_CONFIG``, recorded in the manifest) ONNX Runtime's
constant folding dequantizes these once when the session is created, so a key event runs the fp32
kernels; without it the runtime keeps the ``DequantizeLinear`` nodes and pays a dequantization per call.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper, numpy_helper
from torch import Tensor, nn

from fedkey.models.cifg_lstm import PARAM_NAMES, cell_step, output_logits
from fedkey.models.manifest import Bundle
from fedkey.models.onnx_train import OPSET, quiet_exporter, strip_metadata

PREDICT_INPUTS = ("token", "h", "c")
PREDICT_OUTPUTS = ("logits", "h_out", "c_out")
# Per weight matrix, the axis of its output channels: one int8 scale each.
INT8_CHANNEL_AXES = {"embedding": 0, "w_x": 1, "w_h": 1, "w_proj": 1}
# ORT's ConstantFolding skips DequantizeLinear unless QDQ handling is disabled; then the int8 weights are
# dequantized once at session creation (constant_folding.cc, graph_transformer_utils.cc).
INT8_SESSION_CONFIG = {"session.disable_quant_qdq": "1"}


class _PredictStep(nn.Module):
    """Export wrapper: the parameters as buffers, forward = one keyboard event."""

    def __init__(self, params: dict[str, Tensor]):
        super().__init__()
        for name in PARAM_NAMES:
            self.register_buffer(name, params[name].detach().to(torch.float32).clone())

    def forward(self, token: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        params = {name: getattr(self, name) for name in PARAM_NAMES}
        # F.embedding exports as Gather (indexing would give GatherND).
        h, c = cell_step(params, nn.functional.embedding(token, params["embedding"]), (h, c))
        return output_logits(params, h), h, c


def build_predict(params: dict[str, Tensor]) -> onnx.ModelProto:
    """Export the one-token step graph for these weights (batch dynamic)."""
    e = params["w_proj"].shape[1]
    hidden = params["w_proj"].shape[0]
    batch = torch.export.Dim("batch", min=1)
    example = (torch.tensor([1, 2]), torch.zeros(2, e), torch.zeros(2, hidden))
    with quiet_exporter():
        program = torch.onnx.export(
            _PredictStep(params).eval(),
            example,
            dynamo=True,
            opset_version=OPSET,
            verbose=False,
            input_names=list(PREDICT_INPUTS),
            output_names=list(PREDICT_OUTPUTS),
            dynamic_shapes=({0: batch}, {0: batch}, {0: batch}),
        )
    model = program.model_proto
    if model.functions:
        model = onnx.inliner.inline_local_functions(model)
    _tied_output_gemm(model)
    strip_metadata(model)
    for value in [*model.graph.input, *model.graph.output]:
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = "batch"
    onnx.checker.check_model(model)
    return model


def _tied_output_gemm(model: onnx.ModelProto) -> None:
    """Replace the exported ``logits = h @ embedding.T + out_bias`` by ``Gemm(h, embedding, out_bias, transB=1)``.

    The exporter writes ``embedding.T`` as a ``Transpose`` node, or for small models folds it into a second
    initializer; either way ONNX Runtime would keep a transposed copy of the embedding. The Gemm reads the
    tied embedding itself, so it is stored, quantized and loaded once.
    """
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    expected = "predict graph: expected logits = Add(MatMul(h, embedding.T), out_bias) from the exporter"
    add = producer.get("logits")
    if add is None or add.op_type != "Add" or "out_bias" not in add.input:
        raise ValueError(expected)
    matmul = producer.get(next(i for i in add.input if i != "out_bias"))
    if matmul is None or matmul.op_type != "MatMul":
        raise ValueError(expected)
    transposed = matmul.input[1]
    inits = {t.name: t for t in graph.initializer}
    if transposed in producer and producer[transposed].op_type == "Transpose":
        if list(producer[transposed].input) != ["embedding"]:
            raise ValueError(f"predict graph: the output layer reads {transposed!r}, not the tied embedding")
        graph.node.remove(producer[transposed])
    elif transposed in inits and np.array_equal(
        numpy_helper.to_array(inits[transposed]), numpy_helper.to_array(inits["embedding"]).T
    ):
        graph.initializer.remove(inits[transposed])
    else:
        raise ValueError(f"predict graph: the output layer reads {transposed!r}, not the tied embedding")
    gemm = helper.make_node("Gemm", [matmul.input[0], "embedding", "out_bias"], ["logits"], transB=1)
    index = list(graph.node).index(matmul)
    graph.node.remove(matmul)
    graph.node.remove(add)
    graph.node.insert(index, gemm)


def quantize_predict(model: onnx.ModelProto) -> onnx.ModelProto:
    """Weight-only int8 copy of a predict graph: per-channel symmetric int8 + ``DequantizeLinear``.

    Each matrix of ``INT8_CHANNEL_AXES`` becomes ``<name>_int8`` (values in [-127, 127]) and ``<name>_scale``
    (max |w| / 127 per output channel; 1 for an all-zero channel); a ``DequantizeLinear`` at the top of
    the graph recreates ``<name>``, so the rest of the graph is unchanged. Biases stay fp32.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    dequantize = []
    for init in list(graph.initializer):
        axis = INT8_CHANNEL_AXES.get(init.name)
        if axis is None:
            continue
        w = numpy_helper.to_array(init)
        if w.ndim != 2:
            raise ValueError(f"predict graph: {init.name} has shape {w.shape}; weight-only int8 expects a matrix")
        scale = np.abs(w).max(axis=1 - axis) / 127.0
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        q = np.clip(np.rint(w / np.expand_dims(scale, 1 - axis)), -127, 127).astype(np.int8)
        graph.initializer.remove(init)
        graph.initializer.extend(
            [numpy_helper.from_array(q, f"{init.name}_int8"), numpy_helper.from_array(scale, f"{init.name}_scale")]
        )
        dequantize.append(
            helper.make_node("DequantizeLinear", [f"{init.name}_int8", f"{init.name}_scale"], [init.name], axis=axis)
        )
    missing = set(INT8_CHANNEL_AXES) - {node.output[0] for node in dequantize}
    if missing:
        raise ValueError(f"predict graph has no initializers {sorted(missing)} to quantize")
    nodes = dequantize + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(out)
    return out


def make_session(
    path: str | Path, intra_op_threads: int = 1, config: Mapping[str, str] | None = None
) -> ort.InferenceSession:
    """A CPU InferenceSession with the graph's session config entries (the manifest's ``session_config``).

    One intra-op thread is the keyboard / simulator setting.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxPredictor:
    """Runs predict.onnx / predict.int8.onnx one token per call, as a keyboard does."""

    def __init__(self, path: str | Path, intra_op_threads: int = 1, session_config: Mapping[str, str] | None = None):
        self.session = make_session(path, intra_op_threads, session_config)
        shapes = {i.name: i.shape for i in self.session.get_inputs()}
        self.embed_dim = int(shapes["h"][1])
        self.hidden_dim = int(shapes["c"][1])

    @classmethod
    def from_bundle(cls, bundle: Bundle, role: str = "predict_int8", intra_op_threads: int = 1) -> OnnxPredictor:
        """The bundle's predict graph ("predict" or "predict_int8") with the session config its manifest asks for."""
        return cls(bundle.path(role), intra_op_threads, bundle.session_config(role))

    def zero_state(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        return (np.zeros((batch, self.embed_dim), np.float32), np.zeros((batch, self.hidden_dim), np.float32))

    def step(
        self, token: np.ndarray, state: tuple[np.ndarray, np.ndarray]
    ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """Logits [B, V] after token [B] (int64), and the new (h, c)."""
        logits, h, c = self.session.run(None, {"token": np.asarray(token, np.int64), "h": state[0], "c": state[1]})
        return logits, (h, c)

    def run_sequences(self, tokens: np.ndarray) -> np.ndarray:
        """Logits [B, T, V] for every position of tokens [B, T], fed one step at a time from zero state."""
        state = self.zero_state(tokens.shape[0])
        out = []
        for t in range(tokens.shape[1]):
            logits, state = self.step(tokens[:, t], state)
            out.append(logits)
        return np.stack(out, axis=1)
