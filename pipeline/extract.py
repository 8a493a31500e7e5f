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
from pipeline.cache.basis import BASIS_TABLE, basis_table
from pipeline.cache.relations import RELATIONS_TABLE, relations_table, self_attention
from pipeline.cache.schema import TEACHER_CONFIG, TOKENIZER_DIR
from pipeline.config import ExtractConfig
from pipeline.distributed import Ranks, ranks
from pipeline.errors import PipelineError
from pipeline.extract_loop import LoopPlan, extract_splits, fit_bases
from pipeline.journal import ShardSink, job_key, journal_name, load_journal, shard_tag, work_dir_for
from pipeline.layers import normalize_layers, normalize_model_layers
from pipeline.models import model_fingerprint, tokenizer_fingerprint
from pipeline.tasks.fields import task_fields
from pipeline.tasks.heads import head_of_model

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    return Ranks().device(name)


def extract_cache(
    teacher_dir: Path,
    splits: dict[str, datasets.Dataset],
    out_dir: Path,
    cfg: ExtractConfig,
    *,
    info: dict,
    mask_seed: int = 0,
    on_batch: Callable[[str, int], None] | None = None,
    record: dict | None = None,
    task_config=None,
) -> dict | None:
    """Write the cache for `splits` (prepared by `pipeline.data`, described by its `info`) to `out_dir`. Returns the
    manifest plus timing stats.

    What the cache holds besides hidden layers is the teacher's task's (`pipeline.tasks`): a sequence classifier's
    logits per example; a token classifier's logits and labels per token; a masked-LM teacher's `topk` largest
    vocabulary logits per real token of the seeded-masked rows it saw (masked under `mask_seed`) and the targets.

    Work happens in `work_dir_for(out_dir)` with a journal of completed shards; rerun after a crash (even `kill -9`),
    finished shards are checked against their digest and kept, the rest is computed, and the result is byte-identical
    to an uninterrupted run. The finished cache is moved into `out_dir` in one rename at the end.

    Under torchrun each rank computes a contiguous, token-balanced run of every split's length-sorted batches
    (`rank_batches`) into its own shards and journal in the shared work dir, and resumes on its own; after a barrier
    rank 0 numbers all shards as one cache's and writes the one manifest, so the cache's rows are those of a
    one-process run. Rank 0 returns the result, the other ranks None.
    """
    teacher_dir, out_dir = Path(teacher_dir), Path(out_dir)
    who = ranks()
    dev = who.device(cfg.device)
    teacher_config = AutoConfig.from_pretrained(teacher_dir)
    head = head_of_model(teacher_config)
    task = task_fields(head.name, task_config)  # e.g. a masked LM's topk and masking rate
    # attention maps need the eager implementation: fused kernels never materialise them
    eager = {"attn_implementation": "eager"} if cfg.attentions and cfg.relations == "maps" else {}
    model = head.auto_class().from_pretrained(teacher_dir, use_safetensors=True, **eager).to(dev).eval()
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    n_layers, hidden, heads = model.config.num_hidden_layers, model.config.hidden_size, model.config.num_attention_heads
    shard_max_bytes = int(cfg.shard_max_mb * (1 << 20))
    plan = LoopPlan(
        layers=normalize_layers(cfg.layers, n_layers),
        dtype=cfg.dtype,
        batch_size=cfg.batch_size,
        pad_id=tokenizer.pad_token_id or 0,
        attentions=normalize_model_layers(list(cfg.attentions), n_layers, "extract.attentions"),
        values=normalize_model_layers(list(cfg.values), n_layers, "extract.values"),
        task=task,
        task_setup=task.setup(model, tokenizer, teacher_dir, mask_seed),
        rank=who.rank,
        world=who.world,
        shard_max_bytes=shard_max_bytes,
        relations=cfg.relations,
    )
    if cfg.rank and plan.hidden_layers:
        if cfg.rank > hidden:
            raise PipelineError(
                f"params.yaml: extract.rank {cfg.rank} is more than the teacher's hidden size {hidden}; set it "
                f"to at most {hidden}, or to null for full-width hidden states"
            )
        plan.hidden_rank = cfg.rank
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
    meta.update(task.manifest_meta(plan.task_setup))  # a sequence classifier's adds nothing: its bytes stay
    if plan.hidden_rank:  # (full-width caches keep the manifest they always had)
        meta["rank"] = plan.hidden_rank
    if cfg.relations == "inputs" and (plan.attentions or plan.values):
        meta["relations"] = "inputs"  # (cache.relations: the layers' inputs and projections, not maps and vectors)
    if record is not None:  # an extra teacher's cache: the params that made its teacher (`Params.teacher_record`)
        meta["teacher_params"] = record

    work = work_dir_for(out_dir)
    key = job_key(meta, fields, cfg.batch_size, shard_max_bytes, who.world)
    if who.main:  # rank 0 clears what belongs to no rank, then lays out the shared files, before the others start
        state = load_journal(work, key, who.rank, who.world)
        work.mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(work / TOKENIZER_DIR)
        shutil.copy(teacher_dir / "config.json", work / TEACHER_CONFIG)
    who.barrier()
    if not who.main:
        state = load_journal(work, key, who.rank, who.world)
    state = {name: state[name] for name in splits if name in state}  # split order decides manifest order
    resume = {name: [s["record"] for s in entry["shards"]] for name, entry in state.items()}
    journal = journal_name(who.rank, who.world)
    with CacheWriter(work, fields, meta, shard_max_bytes, resume=resume, shard_tag=shard_tag(who.rank, who.world)) as writer:
        if plan.hidden_rank:  # rank 0 fits the basis (deterministic: a resumed run fits the same one), every rank uses it
            fitted = fit_bases(model, _basis_split(splits), plan, cfg.rank_sample_rows, mask_seed) if who.main else None
            bases, meta["basis"] = who.gather(fitted)[0]
            plan.bases = {layer: tuple(torch.from_numpy(a).to(dev) for a in pair) for layer, pair in bases.items()}
            if who.main:
                writer.write_table(BASIS_TABLE, basis_table(bases))
        if meta.get("relations") and who.main:
            writer.write_table(RELATIONS_TABLE, relations_table(model, sorted({*plan.attentions, *plan.values})))
        sink = ShardSink(writer, work, key, state, journal=journal)
        captured: dict[int, torch.Tensor] = {}
        hooks = [
            self_attention(model, layer, "extract.values").value.register_forward_hook(
                lambda module, args, output, layer=layer: captured.__setitem__(layer, output)
            )
            for layer in plan.stored_relations[1]
        ]
        try:
            stats = extract_splits(model, splits, plan, sink, state=state, on_batch=on_batch, captured=captured)
        finally:
            last_batch = time.perf_counter()
            sink.close()
            for hook in hooks:
                hook.remove()
        everyone = None
        if who.world > 1:  # every rank's shards are complete and journaled: rank 0 lists them all
            everyone = who.gather({name: [s["record"] for s in entry["shards"]] for name, entry in state.items()})
            stats = _combine_stats(who.gather(stats))
            if not who.main:
                writer.close(publish=False)
                who.barrier()  # until rank 0 has published the cache
                return None
        for name, table in task.cache_tables(splits).items():
            writer.write_table(name, table)
        manifest = writer.close(ranks=everyone)
    # busy: the writer thread's time on batches; producer_wait: the teacher loop blocked on a full queue (the writer is
    # the bottleneck when it is large); tail: after the last forward, until the last shard is hashed and the manifest out
    writer_stats = {
        "busy_s": round(sink.busy_s, 3),
        "producer_wait_s": round(sink.wait_s, 3),
        "tail_s": round(time.perf_counter() - last_batch, 3),
    }
    for rank in range(who.world):
        (work / journal_name(rank, who.world)).unlink(missing_ok=True)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(work, out_dir)
    who.barrier()
    return {"manifest": manifest, "stats": stats, "writer": writer_stats, "processes": who.world}


def _basis_split(splits: dict[str, datasets.Dataset]) -> datasets.Dataset:
    """The split the low-rank basis is fitted on: train (the first split where there is none)."""
    return splits.get("train", next(iter(splits.values())))


def _combine_stats(per_rank: list[dict[str, dict]]) -> dict[str, dict]:
    """Per-split timing stats of every rank as one: rows and tokens add up, the split took as long as its slowest rank."""
    out = {}
    for split in per_rank[0]:
        parts = [stats[split] for stats in per_rank]
        out[split] = {
            "seconds": max(p["seconds"] for p in parts),
            "rows": sum(p["rows"] for p in parts),
            "tokens": sum(p["tokens"] for p in parts),
            "resumed_batches": sum(p["resumed_batches"] for p in parts),
            "padding_fraction": max(p["padding_fraction"] for p in parts),
            "seconds_per_rank": [round(p["seconds"], 3) for p in parts],
        }
    return out


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
