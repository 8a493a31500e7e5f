"""P4 for large-vocabulary heads: what a masked-LM teacher's top-k cache costs per token against the full vocabulary,
and how much of the teacher's distribution it keeps.

    python bench/p4_topk_cache.py --teacher artifacts/teacher [--rows 1000] [--ks 1,8,32,128]

--teacher is a masked-LM teacher dir (the teacher stage's output under `task: masked_lm`). The script extracts
the first --rows SST-2 dev+train rows once per k (seeded masking, one hidden layer) and reads back from the shards:
bytes per token of the top-k fields (fp16 values + vocabulary indices, Arrow offsets included) against fp16 logits
over the whole vocabulary, and, running the teacher on the cached masked rows, the share of the teacher's probability
mass the k entries hold at T = 1 and T = 2 (mean over masked tokens and over all real tokens).
"""

import argparse
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from transformers import AutoModelForMaskedLM

from pipeline.cache import TeacherCache
from pipeline.extract import extract_cache
from pipeline.mlm import IGNORE, MLM_TARGET, TOPK_INDICES, TOPK_VALUES
from pipeline.tasks.masked_lm import MaskedLMConfig

from common import WORK, fp16_extract, prepared, save


def field_bytes(cache_dir: Path, names: list[str]) -> int:
    """Bytes the named columns take in the shards (values and offsets buffers), read from the Arrow files."""
    total = 0
    for shard in sorted(cache_dir.glob("*.arrow")):
        table = pa.ipc.open_file(pa.memory_map(str(shard), "r")).read_all()
        total += sum(table.column(n).nbytes for n in names)
    return total


@torch.no_grad()
def mass_covered(teacher, cache_dir: Path, ks: list[int], temperatures=(1.0, 2.0)) -> dict:
    dev = TeacherCache(cache_dir).split("rows", columns=[MLM_TARGET])
    out = {f"T{t:g}": {"masked": {k: [] for k in ks}, "all": {k: [] for k in ks}} for t in temperatures}
    for i in range(len(dev)):
        row = dev[i]
        logits = teacher(input_ids=torch.tensor(row["input_ids"][None].astype(np.int64))).logits[0].float()
        masked = row[MLM_TARGET][:, 0] != IGNORE
        for t in temperatures:
            probs = torch.softmax(logits / t, dim=-1).sort(dim=-1, descending=True).values.cumsum(-1)
            for k in ks:
                covered = probs[:, k - 1].numpy()
                out[f"T{t:g}"]["all"][k].extend(covered.tolist())
                out[f"T{t:g}"]["masked"][k].extend(covered[masked].tolist())
    return {
        t: {where: {str(k): round(float(np.mean(v)), 4) for k, v in per_k.items()} for where, per_k in d.items()}
        for t, d in out.items()
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", required=True, help="a masked-LM teacher dir")
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--ks", default="1,8,32,128")
    args = ap.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    teacher_dir = Path(args.teacher)
    splits, info = prepared(args.rows, None, tokenizer_dir=teacher_dir)
    rows = {"rows": splits["train"]}
    teacher = AutoModelForMaskedLM.from_pretrained(teacher_dir).eval()
    vocab = teacher.config.vocab_size
    per_k = {}
    for k in ks:
        out = WORK / f"p4_topk_{k}"
        shutil.rmtree(out, ignore_errors=True)
        cfg = fp16_extract(layers=[teacher.config.num_hidden_layers], device="cpu")
        split_info = {**info, "splits": {"rows": info["splits"]["train"]}}
        result = extract_cache(teacher_dir, rows, out, cfg, info=split_info, task_config=MaskedLMConfig(topk=k))
        tokens = result["manifest"]["splits"]["rows"]["tokens"]
        topk_b = field_bytes(out, [TOPK_VALUES, TOPK_INDICES])
        target_b = field_bytes(out, [MLM_TARGET])
        per_k[str(k)] = {
            "topk_bytes_per_token": round(topk_b / tokens, 2),
            "target_bytes_per_token": round(target_b / tokens, 2),
            "cache_bytes_per_token": round(result["manifest"]["bytes"] / tokens, 2),
            "vs_full_vocab_fp16": round(2 * vocab / (topk_b / tokens), 1),
        }
    coverage = mass_covered(teacher, WORK / f"p4_topk_{max(ks)}", ks)
    save(
        "p4_topk_cache",
        {
            "figure": "P4 top-k cache of a masked-LM head: bytes per token and teacher probability mass kept",
            "teacher": str(teacher_dir),
            "vocab_size": vocab,
            "rows": len(rows["rows"]),
            "full_vocab_fp16_bytes_per_token": 2 * vocab,
            "per_k": per_k,
            "mass_covered": coverage,
            "masking": "15% of real non-special tokens, 80/10/10, seed 0",
        },
    )


if __name__ == "__main__":
    main()
