"""Exported models as they are deployed: an ONNX Runtime session behind the call of a transformers model.

`export` writes a saved model as `model.onnx` (fp32) and `model.int8.onnx` (dynamic int8) beside its config and
tokenizer (`pipeline.exporting`); `OnnxModel` runs one of them on the CPU and answers `model(input_ids=...,
attention_mask=...)` with the output names of the PyTorch head, as torch tensors. So the task scorers, the latency
timer and the serving classes measure and use an exported model through the same code as its PyTorch original.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig
from transformers.modeling_outputs import QuestionAnsweringModelOutput, SequenceClassifierOutput

from pipeline.errors import PipelineError
from pipeline.scores import EXPORTED_RUNTIMES

RUNTIMES = dict(zip(EXPORTED_RUNTIMES, ("model.onnx", "model.int8.onnx")))  # runtime name -> file in an export dir
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
SUMMARY = "export.json"  # what the export stage measured: sizes, time, largest difference from PyTorch


def output_names(config) -> list[str]:
    """The outputs of a head, named as transformers names them."""
    archs = config.architectures or []
    return ["start_logits", "end_logits"] if any(a.endswith("ForQuestionAnswering") for a in archs) else ["logits"]


class OnnxModel(torch.nn.Module):
    """An ONNX Runtime CPU session answering like a transformers model (a Module, so evaluation code can hold it, and
    transformers' `pipeline` can serve it). `threads` pins the session's intra-op threads (default: torch's, so both
    runtimes are timed alike)."""

    def __init__(self, path: Path, config, threads: int | None = None):
        import onnxruntime as ort

        super().__init__()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # no busy-waiting between runs: the models timed interleaved with it (and the rest of the host) keep the cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path, self.config = Path(path), config
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, **_):
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        feeds = {}
        for name in self.inputs:
            value = given.get(name)
            if value is None:  # no mask: every token is real; no segment ids: all segment 0 (what BERT assumes)
                value = torch.ones_like(input_ids) if name == "attention_mask" else torch.zeros_like(input_ids)
            feeds[name] = np.ascontiguousarray(value.detach().cpu().numpy(), dtype=np.int64)
        outs = {n: torch.from_numpy(o) for n, o in zip(self.outputs, self.session.run(self.outputs, feeds))}
        return QuestionAnsweringModelOutput(**outs) if "start_logits" in outs else SequenceClassifierOutput(**outs)

    @property
    def device(self) -> torch.device:  # what transformers' pipelines ask of a model
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32


def exported_runtimes(export_dir: Path) -> dict[str, Path]:
    """The runtime files an export dir holds, by runtime name, in `RUNTIMES` order."""
    return {name: Path(export_dir) / f for name, f in RUNTIMES.items() if (Path(export_dir) / f).is_file()}


def load_exported(export_dir: Path, runtime: str = "onnx_int8", threads: int | None = None) -> OnnxModel:
    """An exported model (`onnx` or `onnx_int8`) of an export dir, with the config saved beside it."""
    export_dir = Path(export_dir)
    if runtime not in RUNTIMES:
        raise PipelineError(f"runtime '{runtime}' is not one of {', '.join(RUNTIMES)}")
    path = export_dir / RUNTIMES[runtime]
    if not path.is_file() or not (export_dir / "config.json").is_file():
        raise PipelineError(f"{path}: no exported model; run `dvc repro` (the export stage writes it)")
    return OnnxModel(path, AutoConfig.from_pretrained(export_dir), threads)


PIPELINE_TASKS = {  # a head's architecture suffix -> the transformers pipeline that serves it (QA: QuestionAnswerer,
    "ForSequenceClassification": "text-classification",  # transformers 5 has no question-answering pipeline)
    "ForTokenClassification": "token-classification",
    "ForMaskedLM": "fill-mask",
}


def onnx_pipeline(export_dir: Path, runtime: str = "onnx_int8", **kwargs):
    """transformers' `pipeline` for an exported model's task, run by ONNX Runtime: what serving the PyTorch student
    with `pipeline(task, model=dir)` gives (labels, entity spans, filled masks), from the shipped ONNX file. `kwargs`
    go to `pipeline` (e.g. `aggregation_strategy="simple"` for entities). An extractive QA model is served by
    `pipeline.tasks.question_answering.serve.QuestionAnswerer(export_dir, runtime=...)`."""
    import transformers

    model = load_exported(export_dir, runtime)
    arch = (model.config.architectures or [""])[0]
    task = next((t for suffix, t in PIPELINE_TASKS.items() if arch.endswith(suffix)), None)
    if task is None:
        raise PipelineError(
            f"{export_dir}: no transformers pipeline serves a {arch or 'headless'} model (extractive QA: "
            "QuestionAnswerer(export_dir, runtime=...))"
        )
    tokenizer = transformers.AutoTokenizer.from_pretrained(export_dir)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity(transformers.logging.CRITICAL)  # "OnnxModel is not a supported class" only
    try:
        return transformers.pipeline(task, model=model, tokenizer=tokenizer, **kwargs)
    finally:
        transformers.logging.set_verbosity(verbosity)
