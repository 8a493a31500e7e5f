"""Stage one: run the fine-tuned teacher once over the prepared splits and write its outputs to the cache.

`extract_cache` sets the job up (teacher, fields, manifest metadata, resume state) and hands the hot loop
(`pipeline.extract_loop`) a `LoopPlan` and a sink: the host/GPU transfer lives in `pipeline.pinned`, the journal and the
writer thread in `pipeline.journal`, the stored dtypes in `pipeline.cache.codec`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import datasets
import torch
import transformers
from transformers import AutoConfig, AutoTokenizer

from pipeline.cache import CacheWriter
from pipeline.cache.schema import TEACHER_CONFIG, TOKENIZER_DIR
from pipeline.config import ExtractConfig
from pipeline.errors import PipelineError
from pipeline.extract_loop import LoopPlan, extract_splits
from pipeline.journal import JOURNAL, ShardSink, job_key, load_journal, work_dir_for
from pipeline.layers import normalize_layers, normalize_model_layers
from pipeline.models import model_fingerprint, tokenizer_fingerprint
from pipeline.tasks import task_of_model

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PipelineError(f"params.yaml: extract.device is '{name}' but no CUDA device is visible; use 'auto' or 'cpu'")
    return torch.device(name)


def value_projection(model, layer: int):
    """The self-attention value projection of transformer layer `layer` (1-based) of a BERT-like model."""
    try:
        return model.base_model.encoder.layer[layer - 1].attention.self.value
    except AttributeError:
        raise PipelineError(
            f"extract.values: the teacher ({type(model).__name__}) has no BERT-style "
            "encoder.layer[i].attention.self.value; cache values only for BERT-like teachers"
        ) from None


def extract_cache(
    teacher_dir: Path,
    splits: dict[str, datasets.Dataset],
    out_dir: Path,
    cfg: ExtractConfig,
    *,
    info: dict,
    mask_seed: int = 0,
    on_batch: Callable[[str, int], None] | None = None,
) -> dict:
    """Write the cache for `splits` (prepared by `pipeline.data`, described by its `info`) to `out_dir`. Returns the
    manifest plus timing stats.

    What the cache holds besides hidden layers is the teacher's task's (`pipeline.tasks`): a sequence classifier's
    logits per example; a token classifier's logits and labels per token; a masked-LM teacher's `topk` largest
    vocabulary logits per real token of the seeded-masked rows it saw (masked under `mask_seed`) and the targets.

    Work happens in `work_dir_for(out_dir)` with a journal of completed shards; rerun after a crash (even `kill -9`),
    finished shards are checked against their digest and kept, the rest is computed, and the result is byte-identical
    to an uninterrupted run. The finished cache is moved into `out_dir` in one rename at the end.
    """
    teacher_dir, out_dir = Path(teacher_dir), Path(out_dir)
    dev = resolve_device(cfg.device)
    teacher_config = AutoConfig.from_pretrained(teacher_dir)
    task = task_of_model(teacher_config)
    # attention maps need the eager implementation: fused kernels never materialise them
    model = (
        task.auto_class()
        .from_pretrained(teacher_dir, use_safetensors=True, **({"attn_implementation": "eager"} if cfg.attentions else {}))
        .to(dev)
        .eval()
    )
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    n_layers, hidden, heads = model.config.num_hidden_layers, model.config.hidden_size, model.config.num_attention_heads
    plan = LoopPlan(
        layers=normalize_layers(cfg.layers, n_layers),
        dtype=cfg.dtype,
        batch_size=cfg.batch_size,
        pad_id=tokenizer.pad_token_id or 0,
        attentions=normalize_model_layers(list(cfg.attentions), n_layers, "extract.attentions"),
        values=normalize_model_layers(list(cfg.values), n_layers, "extract.values"),
        task=task,
        task_setup=task.extract_setup(cfg, model, tokenizer, teacher_dir, mask_seed),
    )
    fields = plan.fields(model.config.num_labels, hidden, heads, model.config.vocab_size)
    meta = {
        "teacher": {**model_fingerprint(teacher_dir), "model_type": model.config.model_type, "num_hidden_layers": n_layers},
        "tokenizer": {"fingerprint": tokenizer_fingerprint(tokenizer), "dir": TOKENIZER_DIR},
        "max_length": info["max_length"],
        "layers": plan.layers,
        "hidden_size": hidden,
        "dtype": cfg.dtype,
        "label_names": info["label_names"],
        "attentions": plan.attentions,
        "values": plan.values,
        "num_heads": heads,
        "dataset": {name: split["fingerprint"] for name, split in info["splits"].items()},
        "versions": {"torch": torch.__version__.split("+")[0], "transformers": transformers.__version__},
    }
    meta.update(task.manifest_meta(plan.task_setup, cfg))  # a sequence classifier's adds nothing: its bytes stay

    shard_max_bytes = int(cfg.shard_max_mb * (1 << 20))
    work = work_dir_for(out_dir)
    key = job_key(meta, fields, cfg.batch_size, shard_max_bytes)
    state = load_journal(work, key)
    state = {name: state[name] for name in splits if name in state}  # split order decides manifest order
    work.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(work / TOKENIZER_DIR)
    shutil.copy(teacher_dir / "config.json", work / TEACHER_CONFIG)
    resume = {name: [s["record"] for s in entry["shards"]] for name, entry in state.items()}
    with CacheWriter(work, fields, meta, shard_max_bytes, resume=resume) as writer:
        sink = ShardSink(writer, work, key, state)
        captured: dict[int, torch.Tensor] = {}
        hooks = [
            value_projection(model, layer).register_forward_hook(
                lambda module, args, output, layer=layer: captured.__setitem__(layer, output)
            )
            for layer in plan.values
        ]
        try:
            stats = extract_splits(model, splits, plan, sink, state=state, on_batch=on_batch, captured=captured)
        finally:
            last_batch = time.perf_counter()
            sink.close()
            for hook in hooks:
                hook.remove()
        for name, table in task.cache_tables(splits).items():
            writer.write_table(name, table)
        manifest = writer.close()
    # busy: the writer thread's time on batches; producer_wait: the teacher loop blocked on a full queue (the writer is
    # the bottleneck when it is large); tail: after the last forward, until the last shard is hashed and the manifest out
    writer_stats = {
        "busy_s": round(sink.busy_s, 3),
        "producer_wait_s": round(sink.wait_s, 3),
        "tail_s": round(time.perf_counter() - last_batch, 3),
    }
    (work / JOURNAL).unlink()
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(work, out_dir)
    return {"manifest": manifest, "stats": stats, "writer": writer_stats}


def write_extract_report(path: Path, result: dict) -> None:
    manifest = result["manifest"]
    tokens = sum(s["tokens"] for s in manifest["splits"].values())
    report = {
        "bytes": manifest["bytes"],
        "tokens": tokens,
        "bytes_per_token": manifest["bytes"] / max(tokens, 1),
        "bytes_per_token_per_layer": manifest["bytes"] / max(tokens, 1) / max(len(manifest["layers"]), 1),
        "shards": sum(len(s["shards"]) for s in manifest["splits"].values()),
        "splits": result["stats"],
        "writer": result["writer"],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
