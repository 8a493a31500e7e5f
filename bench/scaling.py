"""Scaling: extraction time and cache size against corpus size (1x, 2x, 4x); both should be linear.

`seconds` is the extraction loop (teacher passes + writing); `call_seconds` adds the fixed cost of loading and
fingerprinting the teacher.

    python bench/scaling.py [--rows 3000]

Prints the figure and writes bench/results/scaling.json.
"""

import argparse
import shutil

from pipeline.extract import extract_cache

from common import WORK, Timer, fp16_extract, prepared, save, teacher_dir


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=3000)
    args = ap.parse_args()
    rows = []
    for scale in (1, 2, 4):
        splits, info = prepared(args.rows * scale, 1)
        splits.pop("dev")
        out = WORK / f"scaling_{scale}x"
        shutil.rmtree(out, ignore_errors=True)
        with Timer() as t:
            result = extract_cache(
                teacher_dir(),
                splits,
                out,
                fp16_extract(layers=[2, 4, 6], shard_max_mb=64, device="cpu"),
                info=info,
            )
        m = result["manifest"]
        rows.append(
            {
                "scale": scale,
                "rows": m["splits"]["train"]["rows"],
                "tokens": m["splits"]["train"]["tokens"],
                "seconds": round(sum(s["seconds"] for s in result["stats"].values()), 2),
                "call_seconds": round(t.seconds, 2),
                "cache_mb": round(m["bytes"] / 1e6, 2),
                "shards": len(m["splits"]["train"]["shards"]),
            }
        )
        shutil.rmtree(out)
    base = rows[0]
    save(
        "scaling",
        {
            "figure": "extraction time and cache size vs corpus size",
            "table": rows,
            "seconds_per_1k_tokens": [round(1000 * r["seconds"] / r["tokens"], 4) for r in rows],
            "mb_per_1k_tokens": [round(1000 * r["cache_mb"] / r["tokens"], 4) for r in rows],
            "time_ratio_4x_over_1x": round(rows[-1]["seconds"] / base["seconds"], 3),
            "size_ratio_4x_over_1x": round(rows[-1]["cache_mb"] / base["cache_mb"], 3),
            "token_ratio_4x_over_1x": round(rows[-1]["tokens"] / base["tokens"], 3),
        },
    )


if __name__ == "__main__":
    main()
