"""P1w: how fast the cache writer alone takes batches, with no teacher: the ceiling it puts on extraction.

    python bench/p1w_writer_throughput.py [--gb 2] [--hidden 768] [--layers 3] [--batch-tokens 13000] [--repeats 3]

Synthetic batches shaped like a length-sorted extraction batch (random fp16 hidden rows, fp32 logits, token ids) go
through the extractor's own writer thread (`ShardSink` over `CacheWriter`: Arrow building, shard files,
sha256 + per-batch CRC-32, journal) as fast as it takes them. GB/s = cache bytes / (first put .. manifest written);
`hash_thread_s` = seconds the hashing pool spent on sha256 + CRC-32. The GPU extraction needs the writer to keep up
with the teacher: BERT-base on an H100 makes ~1M tokens/s, i.e. ~4.6 GB/s for three fp16 layers.
"""

import argparse
import itertools
import shutil
import time

import numpy as np

from pipeline.cache import CacheBatch, CacheWriter, FieldSpec
from pipeline.journal import ShardSink, work_dir_for

from common import WORK, save


def batches(total_bytes: int, hidden: int, layers: int, batch_tokens: int, seed: int = 0) -> list[CacheBatch]:
    """The same few batches over and over until `total_bytes` of hidden rows, made before any timing starts."""
    rng = np.random.default_rng(seed)
    made = []
    for _ in range(4):
        lengths = rng.integers(8, 24, size=max(batch_tokens // 16, 1))
        tokens = int(lengths.sum())
        fields = {"logits": rng.standard_normal((len(lengths), 2)).astype(np.float32)}
        for layer in range(layers):
            fields[f"hidden_{layer + 1}"] = rng.standard_normal((tokens, hidden)).astype(np.float16)
        made.append(
            CacheBatch(
                example_id=np.arange(len(lengths)),
                length=lengths,
                label=np.zeros(len(lengths), np.int64),
                input_ids=rng.integers(0, 30000, tokens).astype(np.int32),
                fields=fields,
            )
        )
    out, sent = [], 0
    for batch in itertools.cycle(made):
        if sent >= total_bytes:
            return out
        sent += sum(v.nbytes for v in batch.fields.values())
        out.append(batch)


def run(out, args, stream: list[CacheBatch]) -> dict:
    fields = [FieldSpec("logits", "example", "float32", 2)] + [
        FieldSpec(f"hidden_{layer + 1}", "token", "float16", args.hidden) for layer in range(args.layers)
    ]
    work = work_dir_for(out)
    shutil.rmtree(work, ignore_errors=True)
    state = {"train": {"shards": [], "done": False}}
    started = time.perf_counter()
    with CacheWriter(work, fields, {"bench": True}, args.shard_mb << 20) as writer:
        sink = ShardSink(writer, work, "bench", state)
        n = 0
        for n, batch in enumerate(stream, start=1):
            sink.put("batch", "train", batch, n)
        sink.put("finish", "train", None, n)
        sink.close()
        manifest = writer.close()
    seconds = time.perf_counter() - started
    hashing = [writer.hash_clock.seconds]  # the hashing pool's thread-seconds (its threads overlap: not wall time)
    shutil.rmtree(work)
    return {
        "seconds": round(seconds, 3),
        "bytes": manifest["bytes"],
        "hash_thread_s": round(hashing[0], 3),
        "gb_per_s": round(manifest["bytes"] / seconds / 1e9, 3),
        "writer_busy_s": round(sink.busy_s, 3),
        "producer_wait_s": round(sink.wait_s, 3),
        "shards": len(manifest["splits"]["train"]["shards"]),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--batch-tokens", type=int, default=13000, help="tokens per batch (SST-2 at batch 1024: ~13k)")
    ap.add_argument("--shard-mb", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--name", default="p1w_writer_throughput")
    args = ap.parse_args()
    out = WORK / "p1w_cache"
    stream = batches(int(args.gb * 1e9), args.hidden, args.layers, args.batch_tokens)
    runs = [run(out, args, stream) for _ in range(args.repeats)]
    for r in runs:
        print(
            f"{r['gb_per_s']:.2f} GB/s ({r['bytes'] / 1e9:.2f} GB in {r['seconds']:.2f} s, writer busy "
            f"{r['writer_busy_s']:.2f} s, producer waited {r['producer_wait_s']:.2f} s, hashing {r['hash_thread_s']:.2f} "
            "thread-s)"
        )
    save(
        args.name,
        {
            "figure": "P1w cache writer throughput (no teacher)",
            "median_gb_per_s": sorted(r["gb_per_s"] for r in runs)[len(runs) // 2],
            "runs": runs,
            "hidden": args.hidden,
            "layers": args.layers,
            "batch_tokens": args.batch_tokens,
            "shard_mb": args.shard_mb,
        },
    )


if __name__ == "__main__":
    main()
