"""prepare: read train/dev (and the unlabeled transfer texts, if any) with `datasets`, validate, map labels, tokenize
with the teacher's tokenizer, carve the tuning split -> data/prepared/ (train, dev, val) and data/transfer/ (apart, so the teacher, which never
sees it, does not retrain when only the transfer set changes)."""

from pathlib import Path

from pipeline.cli import run_stage
from pipeline.data import AUGMENT, add_augmented_split, save_prepared
from pipeline.errors import PipelineError
from pipeline.models import (
    check_max_length,
    check_teacher_init,
    load_config,
    load_tokenizer,
    resolve_model_path,
    tokenizer_fingerprint,
)
from pipeline.tasks.data import task_data


def main(params, args):
    teacher = load_config(resolve_model_path(params.teacher.model), params.teacher.trust_remote_code)
    check_max_length(params.teacher.model, params.data.max_length, teacher)  # before work that would fail later
    check_teacher_init(params.students, teacher.to_dict())
    tokenizer = load_tokenizer(params.teacher.model, params.teacher.trust_remote_code)
    task = task_data(params.task, params.task_config)
    splits, info = task.prepare(params.data, tokenizer, params.seed)
    splits, info = task.tuning_split(splits, info, params.data, params.seed)
    if params.data.augment_copies and task.name != "sequence_classification":
        raise PipelineError(
            f"params.yaml: data.augment_copies: word-edit augmentation is built for sequence classification, not "
            f"{task.name} (its rows carry per-word labels); set it to 0"
        )
    splits, info = add_augmented_split(splits, info, params.data, tokenizer, params.seed, task.split_fingerprint)
    info["tokenizer_fingerprint"] = tokenizer_fingerprint(tokenizer)
    info["task"] = params.task
    transfer = {k: splits.pop(k) for k in ("transfer", AUGMENT) if k in splits}  # unlabeled: the teacher never sees them
    transfer_info = {**info, "splits": {k: info["splits"].pop(k) for k in transfer}}
    save_prepared(Path(args.out), splits, info)
    save_prepared(Path(args.transfer_out), transfer, transfer_info)
    for name, stats in {**info["splits"], **transfer_info["splits"]}.items():
        if "questions" in stats:  # extractive QA: a row is a window of a question's context
            print(
                f"prepare: {name}: {stats['questions']} questions in {stats['rows']} windows, {stats['tokens']} tokens, "
                f"{stats['answers_outside_windows']} answers inside no window"
            )
            continue
        truncated = f", {stats['truncated']} truncated" if "truncated" in stats else ""
        print(f"prepare: {name}: {stats['rows']} rows, {stats['tokens']} tokens{truncated}")


def configure(p):
    p.add_argument("--out", required=True, help="the prepared train, dev and val splits")
    p.add_argument("--transfer-out", required=True, help="the transfer split (empty when data.transfer is null)")


if __name__ == "__main__":
    run_stage(main, configure)
