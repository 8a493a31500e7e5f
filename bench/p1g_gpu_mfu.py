"""P1g: teacher-forward throughput and MFU on a GPU — BERT-base shape, bf16 autocast, SDPA attention (goal MFU >= 45%).

    python bench/p1g_gpu_mfu.py [--shapes 512x128,128x512] [--variants eager,compiled,compiled-bf16w] [--peak-tflops auto]

Variants, all under bf16 autocast with SDPA attention: `eager` (fp32 weights, as from_pretrained loads them),
`compiled` (the same under torch.compile), `compiled-bf16w` (weights cast to bf16 once, so autocast has no per-call
weight casts), `autotune-bf16w` (that, under torch.compile mode max-autotune-no-cudagraphs: Triton GEMM templates with
fused epilogues, minutes of compile time). Each shape (batch x sequence length) runs under each variant, timed with CUDA events
(median of --repeats timed blocks of --steps forwards, after warm-up) and the best variant is the headline figure.
MFU = achieved model FLOP/s / the card's dense bf16 peak. Model FLOPs per token of a BERT encoder forward:
2 * L * (4 h^2 + 2 h f)  (QKV + output projections, feed-forward)  +  4 * L * s * h  (scores and weighted sum),
with L layers, hidden h, feed-forward f, sequence length s; embeddings, layer norms and softmax are left out
(they are not matmuls), which makes the figure conservative. The forward returns every layer's hidden states, as the
extract stage asks for. Random weights: speed does not depend on them. Needs CUDA; exits with a message without it.
"""

import argparse
import statistics

import torch
from transformers import BertConfig, BertModel

from common import save

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets.
PEAKS = {
    "H100 SXM": 989.4,
    "H100 80GB HBM3": 989.4,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H200": 989.4,
    "A100": 312.0,
    "L4": 121.0,
}


def peak_for(name: str) -> float:
    for key, value in PEAKS.items():
        if all(p.lower() in name.lower() for p in key.split()):
            return value
    if "H100" in name:
        return PEAKS["H100 SXM"]
    raise SystemExit(f"unknown card '{name}': pass --peak-tflops")


def time_forward(model, ids, mask, steps: int, repeats: int) -> float:
    """Median seconds per forward (CUDA events around blocks of `steps` forwards)."""

    def run():
        return model(input_ids=ids, attention_mask=mask, output_hidden_states=True)

    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(10):
            run()
        torch.cuda.synchronize()
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(steps):
                run()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000 / steps)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="256x128,128x512", help="batch x seq, comma separated")
    ap.add_argument("--variants", default="eager,compiled,compiled-bf16w")
    ap.add_argument("--name", default="p1g_gpu_mfu", help="results file name under bench/results")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--peak-tflops", default="auto")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("P1g needs a CUDA GPU; none is visible here")
    torch.backends.cuda.matmul.allow_tf32 = True
    name = torch.cuda.get_device_name(0)
    peak = peak_for(name) if args.peak_tflops == "auto" else float(args.peak_tflops)
    L, h, f = 12, 768, 3072
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    modes = args.variants.split(",")
    unknown = set(modes) - {"eager", "compiled", "compiled-bf16w", "autotune-bf16w"}
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}")
    config = BertConfig(
        hidden_size=h,
        num_hidden_layers=L,
        num_attention_heads=12,
        intermediate_size=f,
        max_position_embeddings=max(512, *(s for _, s in shapes)),
        attn_implementation="sdpa",
    )
    variants = []
    for mode in modes:
        torch.manual_seed(0)
        model = BertModel(config).cuda().eval()
        if mode.endswith("bf16w"):
            model = model.to(torch.bfloat16)
        if mode == "compiled" or mode == "compiled-bf16w":
            model = torch.compile(model)
        elif mode == "autotune-bf16w":
            model = torch.compile(model, mode="max-autotune-no-cudagraphs")
        for batch, seq in shapes:
            ids = torch.randint(1000, 30000, (batch, seq), device="cuda")
            mask = torch.ones_like(ids)
            seconds = time_forward(model, ids, mask, args.steps, args.repeats)
            flops_per_token = 2 * L * (4 * h * h + 2 * h * f) + 4 * L * seq * h
            achieved = batch * seq * flops_per_token / seconds
            variants.append(
                {
                    "mode": mode,
                    "batch": batch,
                    "seq": seq,
                    "ms_per_forward": round(seconds * 1000, 3),
                    "tokens_per_s": round(batch * seq / seconds),
                    "achieved_tflops": round(achieved / 1e12, 1),
                    "mfu": round(achieved / (peak * 1e12), 3),
                    "flops_per_token": flops_per_token,
                }
            )
            print(variants[-1], flush=True)
    best = max(variants, key=lambda v: v["mfu"])
    save(
        args.name,
        {
            "figure": "P1g BERT-base forward on GPU (bf16 autocast, SDPA): tokens/s and MFU",
            "goal": "MFU >= 0.45",
            "card": name,
            "peak_bf16_tflops": peak,
            "best": best,
            "variants": variants,
            "torch_cuda": torch.version.cuda,
            "command": f"python bench/p1g_gpu_mfu.py --shapes {args.shapes} --variants {args.variants}",
        },
    )


if __name__ == "__main__":
    main()
