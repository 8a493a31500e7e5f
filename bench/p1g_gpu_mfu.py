"""P1g: teacher-forward throughput and MFU on a GPU — BERT-base shape, bf16 autocast, SDPA attention (goal MFU >= 45%).

    python bench/p1g_gpu_mfu.py [--batch 256] [--seq 128] [--peak-tflops auto]

MFU = achieved model FLOP/s / the card's dense bf16 peak. Model FLOPs per token of a BERT encoder forward:
2 * L * (4 h^2 + 2 h f)  (QKV + output projections, feed-forward)  +  4 * L * s * h  (scores and weighted sum),
with L layers, hidden h, feed-forward f, sequence length s; embeddings, layer norms and softmax are left out
(they are not matmuls), which makes the figure conservative. Random weights: speed does not depend on them.
Needs CUDA; exits with a message without it (CI never runs it).
"""

import argparse
import time

import torch
from transformers import BertConfig, BertModel

from common import save

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets.
PEAKS = {"H100 SXM": 989.4, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H200": 989.4, "A100": 312.0, "L4": 121.0}


def peak_for(name: str) -> float:
    for key, value in PEAKS.items():
        parts = key.split()
        if all(p.lower() in name.lower() for p in parts):
            return value
    if "H100" in name:
        return PEAKS["H100 SXM"]
    raise SystemExit(f"unknown card '{name}': pass --peak-tflops")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--peak-tflops", default="auto")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("P1g needs a CUDA GPU; none is visible here")
    torch.backends.cuda.matmul.allow_tf32 = True
    name = torch.cuda.get_device_name(0)
    peak = peak_for(name) if args.peak_tflops == "auto" else float(args.peak_tflops)
    L, h, f = 12, 768, 3072
    config = BertConfig(hidden_size=h, num_hidden_layers=L, num_attention_heads=12, intermediate_size=f,
                        max_position_embeddings=max(512, args.seq), attn_implementation="sdpa")
    model = BertModel(config).cuda().eval()
    ids = torch.randint(1000, 30000, (args.batch, args.seq), device="cuda")
    mask = torch.ones_like(ids)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(10):
            model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.steps):
            model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    tokens = args.batch * args.seq * args.steps
    flops_per_token = 2 * L * (4 * h * h + 2 * h * f) + 4 * L * args.seq * h
    achieved = tokens * flops_per_token / seconds
    save("p1g_gpu_mfu", {"figure": "P1g BERT-base forward on GPU: tokens/s and MFU", "goal": "MFU >= 0.45",
                         "card": name, "peak_bf16_tflops": peak, "tokens_per_s": round(tokens / seconds),
                         "achieved_tflops": round(achieved / 1e12, 1), "mfu": round(achieved / (peak * 1e12), 3),
                         "batch": args.batch, "seq": args.seq, "steps": args.steps, "flops_per_token": flops_per_token,
                         "command": f"python bench/p1g_gpu_mfu.py --batch {args.batch} --seq {args.seq}"})


if __name__ == "__main__":
    main()
