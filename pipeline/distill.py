"""Stage two: train one student from the cache alone. The teacher is never built or run here; with init 'teacher'
only the chosen tensors are read from its safetensors file."""

from __future__ import annotations

import dataclasses
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
from pipeline.cache.schema import MANIFEST, TEACHER_CONFIG
from pipeline.checkpoints import Checkpoints, files_digest, save_atomically, train_work_dir, training_key
from pipeline.collate import ConcatSplits
from pipeline.config import DistillConfig, StudentSpec
from pipeline.data import AUGMENT, TUNE
from pipeline.distributed import ranks
from pipeline.errors import PipelineError
from pipeline.kd import DistillationModule, train_student
from pipeline.layers import LayerPlan, hidden_layer_pairs
from pipeline.models import PROVENANCE, SEEDS_DIR, model_fingerprint, tokenizer_fingerprint
from pipeline.qat import fake_int8, strip_fake_int8
from pipeline.scoring import count_parameters
from pipeline.students import build_student
from pipeline.tasks import task_of_cache
from pipeline.tasks.student import task_student
from pipeline.teachers import join_teachers, open_extra_caches

log = logging.getLogger(__name__)


def teacher_weights_for_init(teacher_dir: Path, manifest: dict) -> Path:
    """The teacher's safetensors file for init 'teacher', checked against the teacher that made the cache."""
    weights = Path(teacher_dir) / "model.safetensors"
    if not weights.is_file():
        raise PipelineError(
            f"{weights}: teacher weights needed for init 'teacher' are missing; run `dvc pull artifacts/teacher` "
            "(or the teacher stage), or use init 'random'"
        )
    if model_fingerprint(teacher_dir)["weights_sha256"] != manifest["teacher"]["weights_sha256"]:
        raise PipelineError(
            f"{weights}: these teacher weights are not the ones the cache was extracted with; "
            "`dvc pull artifacts/teacher` for the matching teacher, or rerun extract (`dvc repro extract`)"
        )
    return weights


def layer_plan(cache: TeacherCache, spec: StudentSpec, cfg: DistillConfig, teacher_config: dict) -> LayerPlan:
    """Pair the student's layers with the cache's teacher layers for each loss `cfg` turns on; refuse what the cache
    or the student's shape cannot serve, naming the fix."""
    cache_dir, manifest = cache.cache_dir, cache.manifest
    n_teacher = manifest["teacher"]["num_hidden_layers"]
    pairs = hidden_layer_pairs(spec.num_layers, n_teacher, cache.layers, cfg.layer_map, cfg.layer_pairs) if cfg.gamma else []
    if cfg.gamma and not pairs:
        raise PipelineError(
            f"{cache_dir}: no cached teacher layer pairs with this student's {spec.num_layers} layers under the "
            f"{cfg.layer_map} map (cache has {cache.layers}); add a layer to extract.layers or set gamma to 0"
        )
    n_heads = manifest.get("num_heads", teacher_config.get("num_attention_heads"))
    att_pairs = (
        hidden_layer_pairs(spec.num_layers, n_teacher, manifest.get("attentions", []), cfg.layer_map)
        if cfg.attention_weight
        else []
    )
    if cfg.attention_weight and not att_pairs:
        raise PipelineError(
            f"{cache_dir}: attention_weight > 0 but no cached teacher attention layer pairs with this student's "
            f"{spec.num_layers} layers (cache has attentions {manifest.get('attentions', [])}); add layers "
            "to extract.attentions and rerun extract, or set attention_weight to 0"
        )
    value_pair = (spec.num_layers, n_teacher) if cfg.value_weight else None
    resolved = spec.resolved(teacher_config)
    if att_pairs and resolved.heads != n_heads:
        raise PipelineError(
            f"params.yaml: the attention loss compares heads one to one: the student has {resolved.heads} heads, "
            f"the teacher {n_heads}; set num_heads to {n_heads} or attention_weight to 0"
        )
    if value_pair and resolved.hidden_size % n_heads:
        raise PipelineError(
            f"params.yaml: value relations use the teacher's {n_heads} heads, which must divide the student's "
            f"hidden_size {resolved.hidden_size}; change hidden_size or set value_weight to 0"
        )
    projections = cache.projections() if att_pairs or value_pair else {}
    plan = LayerPlan(pairs, manifest["hidden_size"], att_pairs, value_pair, n_heads, projections=projections)
    bases = cache.bases() if plan.hidden_layers else {}
    return dataclasses.replace(plan, bases={t: bases[t] for t in plan.hidden_layers if t in bases})


def _no_attention_dropout(student) -> None:
    """Attention maps are only materialised by the eager kernel, and HF returns them after dropout: zeroed entries
    would swamp the KL, so a student with an attention loss trains without attention dropout."""
    student.set_attn_implementation("eager")
    student.config.attention_probs_dropout_prob = 0.0
    for module in student.modules():
        if type(module).__name__.endswith("SelfAttention") and isinstance(getattr(module, "dropout", None), torch.nn.Dropout):
            module.dropout.p = 0.0


@dataclasses.dataclass
class Run:
    """One student's training set-up on one cache: what `distill_student` trains and a multi-task student shares."""

    cache: TeacherCache
    tokenizer: object
    task: str
    plan: LayerPlan
    student: torch.nn.Module
    init_info: dict
    module: DistillationModule
    train: object
    dev: object
    extras: list
    rows: dict  # train_rows (labeled), transfer_rows, augment_rows: what the summary reports
    eval_split: str


def prepare_run(
    cache_dir: Path,
    spec: StudentSpec,
    cfg: DistillConfig,
    *,
    seed: int,
    teacher_dir: Path | None,
    max_length: int | None,
    label_names: list[str] | None,
    rank,
    task_config,
    extra_caches: dict | None = None,
) -> Run:
    """Open and check the cache, build the student (seeded) and its loss module, and the training and tuning splits
    (labeled rows, plus the transfer and augmented rows when the student learns from the teacher)."""
    cache = TeacherCache(cache_dir, verify=cfg.verify_cache)
    tokenizer = AutoTokenizer.from_pretrained(cache.tokenizer_dir)
    teacher_config = json.loads((Path(cache_dir) / TEACHER_CONFIG).read_text())
    task = task_of_cache(cache.manifest)
    plan = layer_plan(cache, spec, cfg, teacher_config)
    check_compatible(
        cache.manifest,
        cache_dir=cache_dir,
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
        max_length=max_length,
        label_names=label_names,
        layers=[t for _, t in plan.pairs],
        values=[plan.value_pair[1]] if plan.value_pair else None,
        rank=rank,
    )
    teacher_weights = teacher_weights_for_init(teacher_dir, cache.manifest) if spec.init == "teacher" else None
    set_seed(seed)
    student, init_info = build_student(spec, teacher_config, cache.label_names, teacher_weights, seed, task)
    if plan.attention_pairs:
        _no_attention_dropout(student)
    if cfg.quantization_aware:  # trained as the int8 export computes (pipeline.qat)
        fake_int8(student)
    facet = task_student(task, task_config)  # its loss reads the task's own params section
    facet.check_cache(cache.manifest, cfg, cache_dir)
    module = DistillationModule(student, cfg, plan, facet)
    attentions, values = plan.stored_relations
    columns = (
        facet.cache_columns()
        + [hidden_field(t) for t in plan.hidden_layers]
        + [attention_field(t) for t in attentions]
        + [value_field(t) for t in values]
    )
    extras = open_extra_caches(cache, extra_caches or {}, cfg.verify_cache)
    split = lambda name: join_teachers(cache.split(name, columns), extras, facet.logit_field)  # noqa: E731
    eval_split = TUNE if TUNE in cache.splits else "dev"  # per-epoch scores on the tuning split; dev only records
    train, dev = split("train"), split(eval_split)
    teacher_signal = bool(cfg.beta or plan.pairs or plan.attention_pairs or plan.value_pair)
    # unlabeled rows (transfer texts, augmented train texts): the teacher's outputs are their only target
    unlabeled = [split(s) for s in ("transfer", AUGMENT) if cfg.transfer and teacher_signal and s in cache.splits]
    sizes = {u.name: len(u) for u in unlabeled}
    rows = {"train_rows": len(train), "transfer_rows": sizes.get("transfer", 0), "augment_rows": sizes.get(AUGMENT, 0)}
    if unlabeled:
        train = ConcatSplits([train, *unlabeled])
    return Run(cache, tokenizer, task, plan, student, init_info, module, train, dev, extras, rows, eval_split)


def distill_student(
    cache_dir: Path,
    out_dir: Path,
    spec: StudentSpec,
    cfg: DistillConfig,
    *,
    seed: int,
    teacher_dir: Path | None = None,
    max_length: int | None = None,
    label_names: list[str] | None = None,
    work: Path | None = None,
    callbacks=(),
    extra_caches: dict[str, tuple[Path, dict]] | None = None,
    task_config=None,
    rank: int | None = ...,
) -> dict:
    """Build the student, check the cache fits it, distil, save with save_pretrained + tokenizer. Returns a summary.

    `extra_caches` (teacher name -> (cache dir, `Params.teacher_record`)) adds the soft targets of more teachers, in
    `cfg.teachers` order after the main one (`pipeline.teachers`): each cache is checked through its own manifest.

    `teacher_dir` is read only for init 'teacher' (the chosen tensors, lazily); init 'random' needs no teacher at all.
    `max_length`, `label_names` and `rank` (params.yaml's; extract.rank) are checked against the cache's. With `work`, training keeps
    resumable checkpoints there (keyed on the student, its settings, seed and the cache's manifest) and resumes from
    the last one an interrupted run left; the caller removes `work` once it is done with it.

    Under torchrun the student trains with DDP (pipeline.student_loop's Accelerate): each process reads its share of every
    global batch of `cfg.batch_size` rows from the cache, and rank 0 saves.
    """
    start = time.perf_counter()
    who = ranks()
    if cfg.batch_size % who.world:
        raise PipelineError(
            f"params.yaml: distill.batch_size {cfg.batch_size} is the global batch and must split evenly over "
            f"{who.world} processes (distill.nproc); use a multiple of {who.world}"
        )
    run = prepare_run(
        cache_dir, spec, cfg, seed=seed, teacher_dir=teacher_dir, max_length=max_length, label_names=label_names,
        rank=rank, task_config=task_config, extra_caches=extra_caches,
    )  # fmt: skip
    cache, tokenizer, plan, student, module, extras = run.cache, run.tokenizer, run.plan, run.student, run.module, run.extras
    checkpoints = None
    if work is not None:
        settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "checkpoint_steps"}
        key = training_key(
            student=dataclasses.asdict(spec),
            distill=settings,
            seed=seed,
            cache=files_digest([Path(cache_dir) / MANIFEST, *(c.cache_dir / MANIFEST for c in extras)]),
            max_length=max_length,
        )
        checkpoints = Checkpoints(work, key, cfg.checkpoint_steps, f"student {Path(out_dir).name} (seed {seed})")
    history = train_student(
        module, run.train, run.dev, cfg, tokenizer.pad_token_id or 0, seed, checkpoints=checkpoints, callbacks=callbacks
    )
    if plan.attention_pairs:
        student.set_attn_implementation("sdpa")  # serve with the fused kernel
    if cfg.quantization_aware:
        strip_fake_int8(student)  # a plain float checkpoint: its int8 export is the model trained
    if who.main:
        save_student(student, tokenizer, Path(out_dir), max_length or cache.manifest["max_length"], kept=work)
    who.barrier()
    evals = [h for h in history if "eval_accuracy" in h]
    summary = {
        "seconds": round(time.perf_counter() - start, 1),
        "params": count_parameters(student),
        "trained_params": count_parameters(module),
        "layer_pairs": plan.pairs,
        "attention_pairs": plan.attention_pairs,
        "value_pair": plan.value_pair,
        "init": run.init_info.get("init"),
        "task": run.task,
        "init_teacher_layers": run.init_info.get("teacher_layers"),
        **run.rows,
        "eval_split": run.eval_split,
        "teachers": list(cfg.teachers),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "eval_accuracy_per_epoch": [round(h["eval_accuracy"], 4) for h in evals],
        "resumed_from_step": checkpoints.resumed_step if checkpoints is not None else None,
        "processes": who.world,
    }
    return {"summary": summary, "history": history}


def save_student(student, tokenizer, out_dir: Path, max_length: int, kept: Path | None = None) -> None:
    """save_pretrained for the model and its tokenizer (which says the length the student was trained at), into a
    temporary dir renamed into place; a failed save names the checkpoints `kept` for the rerun."""
    tokenizer.init_kwargs["max_length"] = max_length

    def write(path: Path) -> None:
        student.save_pretrained(path)
        tokenizer.save_pretrained(path)

    save_atomically(out_dir, write, kept=kept)


def seconds_spread(seconds: list[float]) -> dict:
    """A training's wall time over its seed runs: mean and sample std (0 for one run), as the report gives it."""
    return {
        "seconds_mean": round(statistics.mean(seconds), 1),
        "seconds_std": round(statistics.stdev(seconds), 1) if len(seconds) > 1 else 0.0,
    }


def distill_seeds(cache_dir: Path, out_dir: Path, spec: StudentSpec, cfg: DistillConfig, *, seeds: list[int], **kwargs) -> dict:
    """Train the student once per seed: the first seed is the shipped checkpoint in `out_dir`, the others go to
    `out_dir/seeds/<seed>/` so evaluate and report can give mean +- std. `out_dir/distill.json` records the seeds."""
    out_dir, who = Path(out_dir), ranks()
    if who.main:
        shutil.rmtree(out_dir / SEEDS_DIR, ignore_errors=True)  # never mix in runs of an earlier seed list
    who.barrier()
    work = train_work_dir(out_dir)  # each seed's checkpoints, kept until every seed is saved
    runs = []
    for i, seed in enumerate(seeds):
        log.info("student %s: seed %d (%d of %d)", out_dir.name, seed, i + 1, len(seeds))
        result = distill_student(
            cache_dir,
            out_dir if i == 0 else out_dir / SEEDS_DIR / str(seed),
            spec,
            cfg,
            seed=seed,
            work=work / f"seed-{seed}",
            **kwargs,
        )
        runs.append((seed, result))
    who.barrier()
    if who.main:
        shutil.rmtree(work, ignore_errors=True)
    primary = runs[0][1]
    summary = dict(
        primary["summary"],
        seed=seeds[0],
        seeds=seeds,
        seed_runs=[
            {"seed": s, "seconds": r["summary"]["seconds"], "eval_accuracy_per_epoch": r["summary"]["eval_accuracy_per_epoch"]}
            for s, r in runs
        ],
    )
    summary.update(seconds_spread([r["summary"]["seconds"] for _, r in runs]))
    if who.main:
        (out_dir / PROVENANCE).write_text(json.dumps({"seed": seeds[0], "seeds": seeds}, indent=2) + "\n")
    return {"summary": summary, "history": primary["history"]}
