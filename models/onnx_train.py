"""Plain-ONNX training graphs: one SGD step (``train_step.onnx``) and K local steps (``local_update.onnx``).

ONNX Runtime's own training packages are deprecated, so training is an ordinary inference graph that
computes gradients itself (field notes, ARCHITECTURE.md). The step is written once in torch,
``sgd_step``: unflatten the weights, run the CIFG network with ``torch.func.grad_and_value``, clip the
gradient to a global L2 norm, take an SGD step. It is traced with ``make_fx(tracing_mode="symbolic")``
(batch dynamic, sequence length fixed) and exported with the dynamo exporter. The same function run
eagerly is the torch reference the ONNX graphs are tested against.

``local_update.onnx`` wraps the step graph in an ONNX ``Loop`` (built with ``onnx.helper``): K steps
(K an input) cycling over the phone's batches, returning the model delta clipped to an L2 bound, the
per-step losses and the delta's pre-clip norm: the device half of DP-FedAvg.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Iterator
from pathlib import Path

import onnx
import torch
from onnx import TensorProto, helper
from torch import Tensor
from torch.fx.experimental.proxy_tensor import make_fx

from fedkey.models.cifg_lstm import PARAM_NAMES, ModelConfig, hidden_states, masked_nll

OPSET = 18
NORM_EPS = 1e-12  # keeps clip / norm finite when a gradient or delta is exactly zero


def _unflatten(flat: Tensor, shapes: dict[str, tuple[int, ...]]) -> dict[str, Tensor]:
    sizes = [math.prod(shapes[n]) for n in PARAM_NAMES]
    parts = torch.split(flat, sizes)
    return {n: p.reshape(shapes[n]) for n, p in zip(PARAM_NAMES, parts, strict=True)}


def mean_loss(
    flat: Tensor,
    tokens: Tensor,
    targets: Tensor,
    mask: Tensor,
    shapes: dict[str, tuple[int, ...]],
    chunk: int | None = None,
) -> Tensor:
    """Mean NLL per counted position (mask = 1) of a batch of fixed-length sequences, from zero state.

    `chunk` is `masked_nll`'s row chunk: None (all rows at once) for traced graphs; eager callers
    (the simulator's batched phones) pass a chunk size for the cache-friendly softmax.
    """
    params = _unflatten(flat, shapes)
    batch = tokens.shape[0]
    e, h = shapes["w_proj"][1], shapes["w_proj"][0]
    state = (flat.new_zeros(batch, e), flat.new_zeros(batch, h))
    out, _ = hidden_states(params, tokens, state)
    total = masked_nll(params, out, targets, mask, chunk=chunk)
    return total / torch.clamp(mask.sum(), min=1.0)


def clip_scale(norm: Tensor, bound: Tensor) -> Tensor:
    """Factor that brings a vector of L2 norm `norm` within `bound`; bound <= 0 disables clipping."""
    scale = torch.clamp(bound / torch.clamp(norm, min=NORM_EPS), max=1.0)
    return torch.where(bound > 0, scale, torch.ones_like(scale))


def sgd_step(
    flat: Tensor,
    tokens: Tensor,
    targets: Tensor,
    mask: Tensor,
    lr: Tensor,
    clip: Tensor,
    shapes: dict[str, tuple[int, ...]],
) -> tuple[Tensor, Tensor]:
    """One SGD step with global-norm gradient clipping; returns (updated flat weights, loss before the step).

    flat [P] fp32, tokens/targets [B, T] int64, mask [B, T] fp32, lr and clip fp32 scalars.
    """
    grad, loss = torch.func.grad_and_value(mean_loss)(flat, tokens, targets, mask, shapes)
    norm = torch.sqrt((grad * grad).sum())
    return flat - lr * clip_scale(norm, clip) * grad, loss


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Silence the exporter's known-harmless chatter (missing torchvision ops, axis renaming, a torch
    deprecation inside the exporter) so that `fedkey export` prints only what matters."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*axis name: .* will not be used")
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
            yield
    finally:
        registration.setLevel(level)


def strip_metadata(model: onnx.ModelProto) -> None:
    """Drop the exporter's per-node metadata and doc strings (most of the file's size)."""

    def clean(graph: onnx.GraphProto) -> None:
        graph.doc_string = ""
        for node in graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    clean(attr.g)

    clean(model.graph)
    del model.metadata_props[:]
    model.doc_string = ""


def build_train_step(config: ModelConfig, seq_len: int) -> onnx.ModelProto:
    """Trace `sgd_step` for this model shape and sequence length; batch size stays dynamic."""
    config = config.resolved()
    shapes = config.param_shapes()
    num = config.num_parameters()

    def step(
        flat: Tensor, tokens: Tensor, targets: Tensor, mask: Tensor, lr: Tensor, clip: Tensor
    ) -> tuple[Tensor, Tensor]:
        return sgd_step(flat, tokens, targets, mask, lr, clip, shapes)

    example = (
        torch.zeros(num),
        torch.ones(2, seq_len, dtype=torch.int64),
        torch.ones(2, seq_len, dtype=torch.int64),
        torch.ones(2, seq_len),
        torch.tensor(0.1),
        torch.tensor(1.0),
    )
    batch = torch.export.Dim("batch", min=1)
    with quiet_exporter():
        traced = make_fx(step, tracing_mode="symbolic")(*example)
        program = torch.onnx.export(
            traced.eval(),
            example,
            dynamo=True,
            opset_version=OPSET,
            verbose=False,
            input_names=["weights", "tokens", "targets", "mask", "lr", "clip"],
            output_names=["new_weights", "loss"],
            dynamic_shapes=(None, {0: batch}, {0: batch}, {0: batch}, None, None),
        )
    model = program.model_proto
    if model.functions:
        model = onnx.inliner.inline_local_functions(model)
    strip_metadata(model)
    _name_batch_dims(model, ("tokens", "targets", "mask"), 0, "batch")
    onnx.checker.check_model(model)
    return model


def _name_batch_dims(model: onnx.ModelProto, names: tuple[str, ...], axis: int, dim_name: str) -> None:
    for value in model.graph.input:
        if value.name in names:
            dim = value.type.tensor_type.shape.dim[axis]
            dim.Clear()
            dim.dim_param = dim_name


def build_local_update(step_model: onnx.ModelProto) -> onnx.ModelProto:
    """Wrap a train-step graph in a Loop: K steps over the batches, then the clipped delta.

    Inputs: weights [P], tokens/targets [N, B, T] int64, mask [N, B, T] fp32, steps (int64 scalar K),
    lr, clip (per-step gradient norm bound), delta_clip (L2 bound of the returned delta; <= 0 disables).
    Step k uses batch k mod N. Outputs: delta [P] (clipped), losses [K], delta_norm (pre-clip).
    """
    step_graph = step_model.graph
    prefix = "step/"
    inner_inputs = [i.name for i in step_graph.input]
    if inner_inputs != ["weights", "tokens", "targets", "mask", "lr", "clip"]:
        raise ValueError(f"unexpected train-step inputs {inner_inputs}")
    # Inner names that must not be prefixed: inputs that come from the loop / outer scope.
    rename = {
        "weights": "w_in",
        "tokens": "b_tokens",
        "targets": "b_targets",
        "mask": "b_mask",
        "lr": "lr",
        "clip": "clip",
    }

    def name(n: str) -> str:
        if n == "":
            return n
        return rename.get(n, prefix + n)

    body_nodes = [
        helper.make_node("Mod", ["iter", "num_batches"], ["batch_index"]),
        helper.make_node("Gather", ["tokens", "batch_index"], ["b_tokens"], axis=0),
        helper.make_node("Gather", ["targets", "batch_index"], ["b_targets"], axis=0),
        helper.make_node("Gather", ["mask", "batch_index"], ["b_mask"], axis=0),
    ]
    for node in step_graph.node:
        new = onnx.NodeProto()
        new.CopyFrom(node)
        new.name = prefix + node.name if node.name else ""
        del new.input[:]
        new.input.extend(name(i) for i in node.input)
        del new.output[:]
        new.output.extend(name(o) for o in node.output)
        body_nodes.append(new)
    step_outputs = [o.name for o in step_graph.output]
    body_nodes += [
        helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        helper.make_node("Identity", [name(step_outputs[0])], ["w_out"]),
        helper.make_node("Identity", [name(step_outputs[1])], ["step_loss"]),
    ]
    body_initializers = []
    for t in step_graph.initializer:
        new_t = onnx.TensorProto()
        new_t.CopyFrom(t)
        new_t.name = name(t.name)
        body_initializers.append(new_t)
    num = step_graph.input[0].type.tensor_type.shape.dim[0].dim_value
    body = helper.make_graph(
        body_nodes,
        "local_step",
        [
            helper.make_tensor_value_info("iter", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("w_in", TensorProto.FLOAT, [num]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("w_out", TensorProto.FLOAT, [num]),
            helper.make_tensor_value_info("step_loss", TensorProto.FLOAT, []),
        ],
        initializer=body_initializers,
    )
    seq_len = step_graph.input[1].type.tensor_type.shape.dim[1].dim_value
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    batches = ["num_batches", "batch", seq_len]
    nodes = [
        helper.make_node("Shape", ["tokens"], ["num_batches_1d"], start=0, end=1),
        helper.make_node("Squeeze", ["num_batches_1d"], ["num_batches"]),
        helper.make_node("Loop", ["steps", "loop_cond", "weights"], ["final_weights", "losses"], body=body),
        helper.make_node("Sub", ["final_weights", "weights"], ["delta_raw"]),
        helper.make_node("Mul", ["delta_raw", "delta_raw"], ["delta_sq"]),
        helper.make_node("ReduceSum", ["delta_sq"], ["delta_sq_sum"], keepdims=0),
        helper.make_node("Sqrt", ["delta_sq_sum"], ["delta_norm"]),
        helper.make_node("Max", ["delta_norm", "eps"], ["norm_safe"]),
        helper.make_node("Div", ["delta_clip", "norm_safe"], ["ratio"]),
        helper.make_node("Min", ["ratio", "one"], ["ratio_capped"]),
        helper.make_node("Greater", ["delta_clip", "zero"], ["clip_on"]),
        helper.make_node("Where", ["clip_on", "ratio_capped", "one"], ["scale"]),
        helper.make_node("Mul", ["delta_raw", "scale"], ["delta"]),
    ]
    graph = helper.make_graph(
        nodes,
        "local_update",
        [
            helper.make_tensor_value_info("weights", f32, [num]),
            helper.make_tensor_value_info("tokens", i64, batches),
            helper.make_tensor_value_info("targets", i64, batches),
            helper.make_tensor_value_info("mask", f32, batches),
            helper.make_tensor_value_info("steps", i64, []),
            helper.make_tensor_value_info("lr", f32, []),
            helper.make_tensor_value_info("clip", f32, []),
            helper.make_tensor_value_info("delta_clip", f32, []),
        ],
        [
            helper.make_tensor_value_info("delta", f32, [num]),
            helper.make_tensor_value_info("losses", f32, ["steps"]),
            helper.make_tensor_value_info("delta_norm", f32, []),
        ],
        initializer=[
            helper.make_tensor("loop_cond", TensorProto.BOOL, [], [True]),
            helper.make_tensor("eps", f32, [], [NORM_EPS]),
            helper.make_tensor("one", f32, [], [1.0]),
            helper.make_tensor("zero", f32, [], [0.0]),
        ],
    )
    model = helper.make_model(
        graph, opset_imports=list(step_model.opset_import), producer_name="fedkey", ir_version=step_model.ir_version
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def export_train_graphs(
    config: ModelConfig, seq_len: int, train_step_path: Path, local_update_path: Path
) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """Write train_step.onnx and local_update.onnx for this model shape; returns both models."""
    step = build_train_step(config, seq_len)
    loop = build_local_update(step)
    onnx.save(step, train_step_path)
    onnx.save(loop, local_update_path)
    return step, loop
