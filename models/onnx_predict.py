"""The keyboard's inference graph: one token in, next-token logits and the new LSTM state out.

``predict.onnx`` is exported from the same ``cell_step`` / ``output_logits`` functions the model trains
with, with the weights baked in as initializers and a dynamic batch. The LSTM state is explicit:
the caller keeps (h, c) between key events and feeds it back, starting from zeros.

``predict.int8.onnx`` is the same graph after ONNX Runtime's dynamic quantization: the tied
embedding is stored once as 8-bit (the ``Gather`` reads it directly, the output layer reads its
``Transpose``), and the gate and projection matrices run as ``MatMulInteger``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic
from torch import Tensor, nn

from fedkey.models.cifg_lstm import PARAM_NAMES, cell_step, output_logits
from fedkey.models.onnx_train import OPSET, quiet_exporter, strip_metadata

PREDICT_INPUTS = ("token", "h", "c")
PREDICT_OUTPUTS = ("logits", "h_out", "c_out")


class _PredictStep(nn.Module):
    """Export wrapper: the parameters as buffers, forward = one keyboard event."""

    def __init__(self, params: dict[str, Tensor]):
        super().__init__()
        for name in PARAM_NAMES:
            self.register_buffer(name, params[name].detach().to(torch.float32).clone())

    def forward(self, token: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        params = {name: getattr(self, name) for name in PARAM_NAMES}
        # F.embedding exports as Gather, which the quantizer stores as 8-bit (indexing gives GatherND).
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
    _unfold_tied_transpose(model)
    strip_metadata(model)
    for value in [*model.graph.input, *model.graph.output]:
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = "batch"
    onnx.checker.check_model(model)
    return model


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def _unfold_tied_transpose(model: onnx.ModelProto) -> None:
    """For small models the exporter constant-folds embedding.T into a second initializer; put the
    Transpose back so that the tied weights are stored (and quantized) once."""
    graph = model.graph
    embedding = numpy_helper.to_array(next(t for t in graph.initializer if t.name == "embedding"))
    for init in list(graph.initializer):
        if (
            init.name != "embedding"
            and tuple(init.dims) == embedding.shape[::-1]
            and np.array_equal(numpy_helper.to_array(init), embedding.T)
        ):
            graph.initializer.remove(init)
            # Right before its reader, after the Gather: the quantizer then reuses the 8-bit embedding.
            first_reader = next(i for i, node in enumerate(graph.node) if init.name in node.input)
            graph.node.insert(first_reader, helper.make_node("Transpose", ["embedding"], [init.name], perm=[1, 0]))


def quantize_predict(fp32_path: Path, int8_path: Path) -> None:
    """Dynamic int8 quantization of the predict graph (weights 8-bit, activations quantized per call)."""
    root = logging.getLogger()
    # The quantizer advises shape pre-processing; our graph is already fully shaped.
    advice = _DropMessage("Please consider to run pre-processing")
    root.addFilter(advice)
    try:
        quantize_dynamic(
            fp32_path,
            int8_path,
            weight_type=QuantType.QInt8,
            per_channel=False,
            op_types_to_quantize=["MatMul", "Gather", "Transpose"],
        )
    finally:
        root.removeFilter(advice)
    model = onnx.load(int8_path)
    strip_metadata(model)
    onnx.save(model, int8_path)


def make_session(path: str | Path, intra_op_threads: int = 1) -> ort.InferenceSession:
    """A CPU InferenceSession; one intra-op thread is the keyboard / simulator setting."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxPredictor:
    """Runs predict.onnx / predict.int8.onnx one token per call, as a keyboard does."""

    def __init__(self, path: str | Path, intra_op_threads: int = 1):
        self.session = make_session(path, intra_op_threads)
        shapes = {i.name: i.shape for i in self.session.get_inputs()}
        self.embed_dim = int(shapes["h"][1])
        self.hidden_dim = int(shapes["c"][1])

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
