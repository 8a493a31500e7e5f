"""teacher: fine-tune teacher.model with Trainer for sequence classification, or with teacher.task masked_lm on the corpus
texts as a masked LM (or take it as is when teacher.epochs is 0)."""

import json
import time
from pathlib import Path

from transformers import set_seed

from pipeline.cli import run_stage
from pipeline.data import load_prepared
from pipeline.errors import PipelineError
from pipeline.mlm import MASKED_LM
from pipeline.models import load_classifier, load_masked_lm, load_tokenizer, resolve_model_path, tokenizer_fingerprint
from pipeline.training import fine_tune_masked_lm, fine_tune_teacher, scratch_dir, training_arguments, write_history_csv


def main(params, args):
    cfg = params.teacher
    splits, info = load_prepared(Path(args.prepared))
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    if tokenizer_fingerprint(tokenizer) != info["tokenizer_fingerprint"]:
        raise PipelineError(f"{args.prepared}: prepared with a different tokenizer than teacher.model '{cfg.model}'; rerun prepare")
    set_seed(params.seed)
    mlm = cfg.task == MASKED_LM
    if mlm:
        model = load_masked_lm(resolve_model_path(cfg.model), cfg.trust_remote_code, require_head=cfg.epochs == 0)
    else:
        model = load_classifier(resolve_model_path(cfg.model), num_labels=len(info["label_names"]),
                                label_names=info["label_names"], trust_remote_code=cfg.trust_remote_code,
                                require_head=cfg.epochs == 0)
    start, history = time.perf_counter(), []
    if cfg.epochs > 0:
        targs = training_arguments(scratch_dir(), epochs=cfg.epochs, batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
                                   warmup_ratio=cfg.warmup_ratio, weight_decay=cfg.weight_decay, seed=params.seed)
        history = (fine_tune_masked_lm(model, tokenizer, splits["train"], splits["dev"], targs, cfg.mlm_probability, params.seed)
                   if mlm else fine_tune_teacher(model, tokenizer, splits["train"], splits["dev"], targs))
    out = Path(args.out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_history_csv(history, Path(args.plots))
    evals = [h for h in history if "eval_accuracy" in h]
    summary = {"seconds": round(time.perf_counter() - start, 1), "task": cfg.task, "epochs": cfg.epochs,
               "train_rows": len(splits["train"]), "dev_accuracy_per_epoch": [round(h["eval_accuracy"], 4) for h in evals]}
    if mlm:  # dev masked-LM loss (dynamic masking); the evaluate stage gives masked-token accuracy on the cached masking
        summary["dev_mlm_loss_per_epoch"] = [round(h["eval_loss"], 4) for h in history if "eval_loss" in h]
    Path(args.metrics).parent.mkdir(parents=True, exist_ok=True)
    Path(args.metrics).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"teacher: saved to {out}; {summary}")


def configure(p):
    p.add_argument("--prepared", default="data/prepared")
    p.add_argument("--out", default="artifacts/teacher")
    p.add_argument("--metrics", default="artifacts/metrics/teacher_train.json")
    p.add_argument("--plots", default="artifacts/plots/teacher.csv")


if __name__ == "__main__":
    run_stage(main, configure)
