"""prepare: read train/dev with `datasets`, validate, map labels, tokenize with the teacher's tokenizer -> data/prepared/."""

import shutil
from pathlib import Path

from pipeline.cli import run_stage
from pipeline.data import prepare_corpus, save_prepared
from pipeline.models import load_tokenizer, tokenizer_fingerprint


def main(params, args):
    tokenizer = load_tokenizer(params.teacher.model, params.teacher.trust_remote_code)
    splits, info = prepare_corpus(params.data, tokenizer, params.seed)
    info["tokenizer_fingerprint"] = tokenizer_fingerprint(tokenizer)
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    save_prepared(out, splits, info)
    for name, stats in info["splits"].items():
        print(f"prepare: {name}: {stats['rows']} rows, {stats['tokens']} tokens, {stats['truncated']} truncated")


if __name__ == "__main__":
    run_stage(main, lambda p: p.add_argument("--out", default="data/prepared"))
