"""Stage two: train one student from the cache alone. The teacher is never built or run here; with init 'teacher'
only the chosen tensors are read from its safetensors file."""

from __future__ import annotations

import json
import logging
import resource
import shutil
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, set_seed

from pipeline.cache import TeacherCache, attention_field, check_compatible, hidden_field, value_field
from pipeline.cache.schema import TEACHER_CONFIG
from pipeline.config import DistillConfig, StudentSpec
from pipeline.errors import PipelineError
from pipeline.metrics import count_parameters
from pipeline.mlm import CLASSIFICATION, MASKED_LM, MLM_TARGET, TOPK_INDICES, TOPK_VALUES
from pipeline.models import PROVENANCE, SEEDS_DIR, build_student, model_fingerprint, tokenizer_fingerprint
from pipeline.training import (ConcatSplits, DistillationModule, hidden_layer_pairs, optimizer_choice, scratch_dir, train_student,
                               training_arguments)

log = logging.getLogger(__name__)


def teacher_weights_for_init(teacher_dir: Path, manifest: dict) -> Path:
    """The teacher's safetensors file for init 'teacher', checked against the teacher that made the cache."""
    weights = Path(teacher_dir) / "model.safetensors"
    if not weights.is_file():
        raise PipelineError(f"{weights}: teacher weights needed for init 'teacher' are missing; run `dvc pull artifacts/teacher` "
                            "(or the teacher stage), or use init 'random'")
    if model_fingerprint(teacher_dir)["weights_sha256"] != manifest["teacher"]["weights_sha256"]:
        raise PipelineError(f"{weights}: these teacher weights are not the ones the cache was extracted with; "
                            "`dvc pull artifacts/teacher` for the matching teacher, or rerun extract (`dvc repro extract`)")
    return weights


def distill_student(cache_dir: Path, out_dir: Path, spec: StudentSpec, cfg: DistillConfig, *, seed: int,
                    teacher_dir: Path | None = None, max_length: int | None = None, label_names: list[str] | None = None,
                    verify: str = "lazy") -> dict:
    """Build the student, check the cache fits it, distil, save with save_pretrained + tokenizer. Returns a summary.

    `teacher_dir` is read only for init 'teacher' (the chosen tensors, lazily); init 'random' needs no teacher at all.
    """
    start = time.perf_counter()
    cache = TeacherCache(cache_dir, verify=verify)
    tokenizer = AutoTokenizer.from_pretrained(cache.tokenizer_dir)
    teacher_config = json.loads((Path(cache_dir) / TEACHER_CONFIG).read_text())
    task = cache.manifest.get("task", CLASSIFICATION)
    n_teacher = cache.manifest["teacher"]["num_hidden_layers"]
    pairs = hidden_layer_pairs(spec.num_layers, n_teacher, cache.layers, cfg.layer_map, cfg.layer_pairs) if cfg.gamma else []
    if cfg.gamma and not pairs:
        raise PipelineError(f"{cache_dir}: no cached teacher layer pairs with this student's {spec.num_layers} layers under the "
                            f"{cfg.layer_map} map (cache has {cache.layers}); add a layer to extract.layers or set gamma to 0")
    n_heads = cache.manifest.get("num_heads", teacher_config.get("num_attention_heads"))
    att_pairs = hidden_layer_pairs(spec.num_layers, n_teacher, cache.manifest.get("attentions", []), cfg.layer_map) \
        if cfg.attention_weight else []
    if cfg.attention_weight and not att_pairs:
        raise PipelineError(f"{cache_dir}: attention_weight > 0 but no cached teacher attention layer pairs with this student's "
                            f"{spec.num_layers} layers (cache has attentions {cache.manifest.get('attentions', [])}); add layers "
                            "to extract.attentions and rerun extract, or set attention_weight to 0")
    value_pair = (spec.num_layers, n_teacher) if cfg.value_weight else None
    check_compatible(cache.manifest, cache_dir=cache_dir, tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
                     max_length=max_length, label_names=label_names, layers=[t for _, t in pairs],
                     values=[value_pair[1]] if value_pair else None)
    resolved = spec.resolved(teacher_config)
    if att_pairs and resolved.heads != n_heads:
        raise PipelineError(f"params.yaml: the attention loss compares heads one to one: the student has {resolved.heads} heads, "
                            f"the teacher {n_heads}; set num_heads to {n_heads} or attention_weight to 0")
    if value_pair and resolved.hidden_size % n_heads:
        raise PipelineError(f"params.yaml: value relations use the teacher's {n_heads} heads, which must divide the student's "
                            f"hidden_size {resolved.hidden_size}; change hidden_size or set value_weight to 0")
    teacher_weights = teacher_weights_for_init(teacher_dir, cache.manifest) if spec.init == "teacher" else None
    set_seed(seed)
    student, init_info = build_student(spec, teacher_config, cache.label_names, teacher_weights, seed, task)
    if att_pairs:
        student.set_attn_implementation("eager")  # attention maps are only materialised by the eager kernel
        # HF returns attention weights after dropout; zeroed entries would swamp the KL, so the student trains without it
        student.config.attention_probs_dropout_prob = 0.0
        for module in student.modules():
            if type(module).__name__.endswith("SelfAttention") and isinstance(getattr(module, "dropout", None), torch.nn.Dropout):
                module.dropout.p = 0.0
    module = DistillationModule(student, pairs, cache.manifest["hidden_size"], alpha=cfg.alpha, beta=cfg.beta,
                                gamma=cfg.gamma, temperature=cfg.temperature, logit_loss=cfg.logit_loss,
                                hidden_loss=cfg.hidden_loss, temperature_end=cfg.temperature_end, attention_pairs=att_pairs,
                                attention_weight=cfg.attention_weight, attention_loss=cfg.attention_loss,
                                value_pair=value_pair, value_weight=cfg.value_weight, relation_heads=n_heads, task=task,
                                mlm_positions=cfg.mlm_positions)
    columns = ([MLM_TARGET, TOPK_VALUES, TOPK_INDICES] if task == MASKED_LM else ["logits"]) + sorted({hidden_field(t) for _, t in pairs}) + [attention_field(t) for _, t in att_pairs] + \
        ([value_field(value_pair[1])] if value_pair else [])
    train, dev = cache.split("train", columns), cache.split("dev", columns)
    teacher_signal = bool(cfg.beta or (cfg.gamma and pairs) or att_pairs or value_pair)
    transfer = cache.split("transfer", columns) if cfg.transfer and teacher_signal and "transfer" in cache.splits else None
    labeled_rows, transfer_rows = len(train), len(transfer) if transfer is not None else 0
    if transfer is not None:  # unlabeled rows: the teacher's outputs are their only target
        train = ConcatSplits([train, transfer])
    args = training_arguments(scratch_dir(), epochs=cfg.epochs, batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
                              warmup_ratio=cfg.warmup_ratio, weight_decay=cfg.weight_decay, seed=seed,
                              logging_steps=cfg.logging_steps, num_workers=cfg.num_workers, scheduler=cfg.scheduler,
                              max_grad_norm=cfg.max_grad_norm)
    history = train_student(module, train, dev, args, sorted({t for _, t in pairs}), tokenizer.pad_token_id or 0,
                            optimizer=optimizer_choice(cfg.optimizer, cfg.learning_rate, cfg.momentum),
                            staged=(cfg.step_stages, cfg.step_gamma) if cfg.scheduler == "step" else None)
    out_dir = Path(out_dir)
    if att_pairs:
        student.set_attn_implementation("sdpa")  # serve with the fused kernel
    student.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    evals = [h for h in history if "eval_accuracy" in h]
    summary = {"seconds": round(time.perf_counter() - start, 1), "params": count_parameters(student),
               "trained_params": count_parameters(module), "layer_pairs": pairs, "attention_pairs": att_pairs,
               "value_pair": value_pair, "init": init_info.get("init"), "task": task,
               "init_teacher_layers": init_info.get("teacher_layers"), "train_rows": labeled_rows,
               "transfer_rows": transfer_rows,
               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
               "dev_accuracy_per_epoch": [round(h["eval_accuracy"], 4) for h in evals]}
    return {"summary": summary, "history": history}


def distill_seeds(cache_dir: Path, out_dir: Path, spec: StudentSpec, cfg: DistillConfig, *, seeds: list[int], **kwargs) -> dict:
    """Train the student once per seed: the first seed is the shipped checkpoint in `out_dir`, the others go to
    `out_dir/seeds/<seed>/` so evaluate and report can give mean +- std. `out_dir/distill.json` records the seeds."""
    out_dir = Path(out_dir)
    shutil.rmtree(out_dir / SEEDS_DIR, ignore_errors=True)  # never mix in runs of an earlier seed list
    runs = []
    for i, seed in enumerate(seeds):
        log.info("student %s: seed %d (%d of %d)", out_dir.name, seed, i + 1, len(seeds))
        result = distill_student(cache_dir, out_dir if i == 0 else out_dir / SEEDS_DIR / str(seed), spec, cfg, seed=seed, **kwargs)
        runs.append((seed, result))
    primary = runs[0][1]
    summary = dict(primary["summary"], seed=seeds[0], seeds=seeds,
                   seed_runs=[{"seed": s, "seconds": r["summary"]["seconds"],
                               "dev_accuracy_per_epoch": r["summary"]["dev_accuracy_per_epoch"]} for s, r in runs])
    seconds = [r["summary"]["seconds"] for _, r in runs]
    summary["seconds_mean"] = round(statistics.mean(seconds), 1)
    summary["seconds_std"] = round(statistics.stdev(seconds), 1) if len(seconds) > 1 else 0.0
    (out_dir / PROVENANCE).write_text(json.dumps({"seed": seeds[0], "seeds": seeds}, indent=2) + "\n")
    return {"summary": summary, "history": primary["history"]}

