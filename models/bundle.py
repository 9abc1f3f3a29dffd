"""Write the on-device bundle for a checkpoint: ONNX graphs, flat weights, tokenizer, lexicon and manifest.

The bundle is assembled in a temporary sibling directory, verified with ``load_bundle`` and only then
moved into place, so a reader never sees a half-written bundle. The training graphs do not contain the
weights; when a previous bundle of the same model shape is given (``reuse_graphs_from``), its
``train_step.onnx`` and ``local_update.onnx`` are copied instead of traced again (a federated run
publishes one bundle per model version).

``lexicon.txt`` is the word list of whole-word suggestions: the caller's (e.g. the prepared data folder's
``lexicon.txt``) or, when none is given, every whole-word piece of the tokenizer (``tokenizer_lexicon``), which
reveals nothing the tokenizer does not.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import onnx

from fedkey.models.checkpoint import Checkpoint
from fedkey.models.manifest import (
    FORMAT_VERSION,
    GRAPH_FILES,
    LEXICON_FILE,
    LOCAL_UPDATE_FILE,
    MANIFEST_FILE,
    PREDICT_FILE,
    PREDICT_INT8_FILE,
    TOKENIZER_FILE,
    TRAIN_STEP_FILE,
    WEIGHTS_FILE,
    BundleError,
    GraphSpec,
    Manifest,
    ModelShape,
    TensorSpec,
    file_entry,
    flatten_params,
    is_lexicon_word,
    load_bundle,
    param_layout,
    write_lexicon,
    write_weights,
)
from fedkey.models.onnx_predict import INT8_SESSION_CONFIG, build_predict, quantize_predict
from fedkey.models.onnx_train import OPSET, export_train_graphs
from fedkey.models.tokenizer import WORD_START, Tokenizer

# Session config entries each graph needs (docs/artifacts.md §2); graphs not listed need none.
SESSION_CONFIG = {"predict_int8": INT8_SESSION_CONFIG}

_ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.INT64: "int64", onnx.TensorProto.BOOL: "bool"}


def _tensor_specs(values: list[onnx.ValueInfoProto]) -> tuple[TensorSpec, ...]:
    specs = []
    for v in values:
        t = v.type.tensor_type
        shape = tuple(d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim)
        specs.append(TensorSpec(name=v.name, dtype=_ONNX_DTYPES[t.elem_type], shape=shape))
    return tuple(specs)


def graph_spec(path: Path, session_config: Mapping[str, str] | None = None) -> GraphSpec:
    """Inputs and outputs of an ONNX file, and the session config it needs, as recorded in the manifest."""
    model = onnx.load(path, load_external_data=False)
    return GraphSpec(
        file=path.name,
        inputs=_tensor_specs(list(model.graph.input)),
        outputs=_tensor_specs(list(model.graph.output)),
        session_config=dict(session_config or {}),
    )


def tokenizer_lexicon(tokenizer: Tokenizer) -> list[str]:
    """The words the tokenizer holds as single pieces (``▁word``), in piece-id order."""
    pieces = [p for p, start in zip(tokenizer.pieces, tokenizer.word_start, strict=True) if start]
    return list(dict.fromkeys(w for w in (p.removeprefix(WORD_START) for p in pieces) if is_lexicon_word(w)))


def _reusable_train_graphs(source: Path, manifest: Manifest) -> bool:
    try:
        old = load_bundle(source).manifest
    except BundleError:
        return False
    return (old.model, old.seq_len, old.opset, old.format_version) == (
        manifest.model,
        manifest.seq_len,
        manifest.opset,
        manifest.format_version,
    )


def export_bundle(
    checkpoint: Checkpoint,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    reuse_graphs_from: str | Path | None = None,
    lexicon: Sequence[str] | None = None,
) -> Manifest:
    """Write the bundle for `checkpoint` into `out_dir` and return its manifest.

    `out_dir` must not exist unless `overwrite` is set, in which case it must be an existing bundle or
    an empty directory (nothing else is ever deleted). `lexicon` (normalised words, most useful first)
    becomes lexicon.txt; None writes ``tokenizer_lexicon(checkpoint.tokenizer)``.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        if not overwrite:
            raise BundleError(f"{out_dir} exists; pass overwrite=True (--force) to replace it")
        if not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / MANIFEST_FILE).is_file()):
            raise BundleError(f"{out_dir} is neither a bundle nor an empty directory; refusing to replace it")
    config = checkpoint.model.config.resolved()
    assert config.embed_dim is not None and config.hidden_dim is not None
    if checkpoint.tokenizer.vocab_size != config.vocab_size:
        raise BundleError(f"tokenizer has {checkpoint.tokenizer.vocab_size} pieces, the model {config.vocab_size}")
    layout = param_layout(config)
    params = checkpoint.model.param_dict()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        write_weights(flatten_params(params, layout), tmp / WEIGHTS_FILE)
        checkpoint.tokenizer.save(tmp / TOKENIZER_FILE)
        write_lexicon(tokenizer_lexicon(checkpoint.tokenizer) if lexicon is None else lexicon, tmp / LEXICON_FILE)
        predict = build_predict({n: p.detach() for n, p in params.items()})
        onnx.save(predict, tmp / PREDICT_FILE)
        onnx.save(quantize_predict(predict), tmp / PREDICT_INT8_FILE)
        draft = Manifest(
            format_version=FORMAT_VERSION,
            model_version=checkpoint.model_version,
            model=ModelShape(
                vocab_size=config.vocab_size,
                embed_dim=config.embed_dim,
                hidden_dim=config.hidden_dim,
                num_parameters=config.num_parameters(),
            ),
            parameters=layout,
            seq_len=checkpoint.seq_len,
            opset=OPSET,
            graphs={},
            files={},
        )
        if reuse_graphs_from is not None and _reusable_train_graphs(Path(reuse_graphs_from), draft):
            for name in (TRAIN_STEP_FILE, LOCAL_UPDATE_FILE):
                shutil.copyfile(Path(reuse_graphs_from) / name, tmp / name)
        else:
            export_train_graphs(config, checkpoint.seq_len, tmp / TRAIN_STEP_FILE, tmp / LOCAL_UPDATE_FILE)
        graphs = {role: graph_spec(tmp / name, SESSION_CONFIG.get(role)) for role, name in GRAPH_FILES.items()}
        files = {
            name: file_entry(tmp / name)
            for name in (
                PREDICT_FILE,
                PREDICT_INT8_FILE,
                TRAIN_STEP_FILE,
                LOCAL_UPDATE_FILE,
                WEIGHTS_FILE,
                TOKENIZER_FILE,
                LEXICON_FILE,
            )
        }
        manifest = draft.model_copy(update={"graphs": graphs, "files": files})
        (tmp / MANIFEST_FILE).write_text(manifest.to_json())
        load_bundle(tmp, expected_model_version=checkpoint.model_version)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return manifest
