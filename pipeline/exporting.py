"""Export a saved model the way it ships: ONNX fp32 through torch.onnx's exporter, int8 through ONNX Runtime's
dynamic quantizer, the tokenizer and config beside them, and a check that the graph answers as PyTorch does.

The fp32 graph is exported with dynamic batch and sequence axes, then run by ONNX Runtime on batches of other shapes
(batch 1 included) against the PyTorch model: a graph that disagrees by more than `FP32_TOLERANCE` is refused, not
shipped. The int8 graph's difference is recorded (it is a quantized model: its quality is measured by `evaluate`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import tempfile
import time
import warnings
from pathlib import Path

import torch
from transformers import AutoTokenizer

from pipeline.checkpoints import save_atomically
from pipeline.config import ExportConfig
from pipeline.errors import PipelineError
from pipeline.models import load_saved_model
from pipeline.onnx_models import INPUTS, RUNTIMES, SUMMARY, OnnxModel, output_names

log = logging.getLogger(__name__)
FP32_TOLERANCE = 1e-3  # largest |ONNX - PyTorch| output accepted for the fp32 graph (float32 round-off is ~1e-5)


class _Outputs(torch.nn.Module):
    """The model with plain tensor outputs in a fixed order, named as transformers names them."""

    def __init__(self, model, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, input_ids, attention_mask, token_type_ids):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return tuple(getattr(out, n) for n in self.names)


def _sample(config, batch: int, length: int, seed: int) -> dict[str, torch.Tensor]:
    """Token ids of real-looking rows: [CLS] ... [SEP], the later rows padded, segment 1 on the second half."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(min(999, config.vocab_size // 2), config.vocab_size, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    for r in range(1, batch):
        mask[r, max(2, length - r * length // (2 * batch)) :] = 0
    ids[:, 0] = 101 if config.vocab_size > 102 else 1
    ids = ids * mask
    types = torch.zeros_like(ids)
    types[:, length // 2 :] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types * mask}


def _export_fp32(model, path: Path, cfg: ExportConfig) -> None:
    """torch.onnx's export of the model with dynamic batch and sequence axes."""
    names = output_names(model.config)
    sample = _sample(model.config, 2, 16, 0)
    if cfg.exporter == "dynamo":
        dim = torch.export.Dim.DYNAMIC
        how = dict(kwargs=sample, dynamic_shapes={n: {0: dim, 1: dim} for n in INPUTS}, dynamo=True, external_data=False)
        args = ()
    else:
        dynamic = {n: {0: "batch", 1: "sequence"} for n in INPUTS} | {n: {0: "batch", 1: "sequence"} for n in names}
        if names == ["logits"] and model.config.architectures[0].endswith("ForSequenceClassification"):
            dynamic["logits"] = {0: "batch"}
        how, args = dict(dynamic_axes=dynamic, dynamo=False), tuple(sample[n] for n in INPUTS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                _Outputs(model, names).eval(),
                args,
                str(path),
                input_names=list(INPUTS),
                output_names=names,
                opset_version=cfg.opset,
                verbose=False,
                **how,
            )
        except Exception as exc:  # the exporter's failures are many types; the user's fix is the opset or the exporter
            raise PipelineError(
                f"{path.parent}: torch.onnx ({cfg.exporter}) could not export the model at opset {cfg.opset} "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); try export.opset 18 or the other "
                "export.exporter"
            ) from None


def _fuse(model, src: Path, dst: Path) -> None:
    """ONNX Runtime's transformer optimizer: attention, embedding + layer norm, skip layer norm and GELU fused."""
    from onnxruntime.transformers.optimizer import optimize_model

    c = model.config
    optimize_model(str(src), model_type="bert", num_heads=c.num_attention_heads, hidden_size=c.hidden_size).save_model_to_file(
        str(dst)
    )


def largest_difference(model, onnx_model: OnnxModel) -> float:
    """Largest |ONNX - PyTorch| over the outputs, on batches of shapes other than the export's (batch 1 included)."""
    worst = 0.0
    with torch.no_grad():
        for batch, length, seed in ((1, 7, 1), (3, 23, 2), (8, 40, 3)):
            inputs = _sample(model.config, batch, min(length, model.config.max_position_embeddings), seed)
            ref, got = model(**inputs), onnx_model(**inputs)
            for name in onnx_model.outputs:
                mask = inputs["attention_mask"].bool()
                a, b = getattr(ref, name), getattr(got, name)
                if a.dim() >= 2 and a.shape[:2] == mask.shape:  # per-token outputs: padding positions are not used
                    a, b = a[mask], b[mask]
                worst = max(worst, float((a.float() - b.float()).abs().max()))
    return worst


def _quantize(src: Path, dst: Path, cfg: ExportConfig) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    weight_type = QuantType.QInt8 if cfg.weight_type == "qint8" else QuantType.QUInt8
    root = logging.getLogger()  # the quantizer warns through root: quieted while it runs, restored after
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    # fused operators (com.microsoft domain) have no inferred output types: their tensors are float
    options = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    # ONNX Runtime's shape inference leaves sym_shape_infer_temp.onnx in the working directory when fused operators
    # stop it: run it in a directory that is thrown away (the paths resolved before going there)
    src, dst = src.resolve(), dst.resolve()
    try:
        with tempfile.TemporaryDirectory() as scratch, contextlib.chdir(scratch):
            quantize_dynamic(
                str(src),
                str(dst),
                weight_type=weight_type,
                per_channel=cfg.per_channel,
                extra_options=options,
            )
    finally:
        root.setLevel(level)


def export_model(model_dir: Path, out_dir: Path, cfg: ExportConfig) -> dict:
    """Write `out_dir` (in one rename): model.onnx, model.int8.onnx (unless export.quantize is none), config.json,
    the tokenizer and export.json. Returns export.json's content."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    # eager attention under the TorchScript exporter: the pattern ONNX Runtime's optimizer fuses into one operator
    model = load_saved_model(model_dir, **({"attn_implementation": "eager"} if cfg.exporter == "torchscript" else {}))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    summary: dict = {"source": str(model_dir), **dataclasses.asdict(cfg)}

    def write(tmp: Path) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        # the int8 file quantizes the graph as exported (what quantization_aware training computes, bit for bit); the
        # fp32 file is fused (export.optimize): fused int8 operators round differently and were not faster (l2: 2%)
        raw = tmp / "exported.onnx"
        _export_fp32(model, raw, cfg)
        if cfg.optimize:
            _fuse(model, raw, tmp / RUNTIMES["onnx"])
        else:
            raw.rename(tmp / RUNTIMES["onnx"])
            raw = tmp / RUNTIMES["onnx"]
        summary["export_seconds"] = round(time.perf_counter() - start, 2)
        diff = largest_difference(model, OnnxModel(tmp / RUNTIMES["onnx"], model.config))
        if diff > FP32_TOLERANCE:
            raise PipelineError(
                f"{model_dir}: the exported ONNX graph differs from the PyTorch model by {diff:.2g} (over "
                f"{FP32_TOLERANCE}); export with export.opset 18, or report the model's architecture"
            )
        summary["onnx_max_abs_diff"] = diff
        if cfg.quantize == "dynamic":
            start = time.perf_counter()
            _quantize(raw, tmp / RUNTIMES["onnx_int8"], cfg)
            summary["quantize_seconds"] = round(time.perf_counter() - start, 2)
            summary["onnx_int8_max_abs_diff"] = largest_difference(model, OnnxModel(tmp / RUNTIMES["onnx_int8"], model.config))
        if raw.name == "exported.onnx":
            raw.unlink()
        model.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        summary["size_mb"] = {r: round((tmp / f).stat().st_size / 1e6, 3) for r, f in RUNTIMES.items() if (tmp / f).is_file()}
        (tmp / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")

    save_atomically(out_dir, write)
    return summary
