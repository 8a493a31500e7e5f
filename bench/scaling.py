"""Scaling: extraction time and cache size against corpus size (1x, 2x, 4x); both should be linear.

    python bench/scaling.py [--rows 3000]

Writes bench/results/scaling.json, scaling.csv and scaling.svg (two panels: seconds and MB against rows).
"""

import argparse
import csv
import shutil

from common import RESULTS, WORK, Timer, fingerprints, prepared, save, teacher_dir

from pipeline.extract import extract_cache


def svg_plot(rows: list[dict], path) -> None:
    """A dependency-free line chart: seconds and MB against rows, each normalised to its largest value."""
    w, h, pad = 520, 300, 50
    xmax = max(r["rows"] for r in rows)
    series = {"extract seconds": ("seconds", "#1f77b4"), "cache MB": ("cache_mb", "#d62728")}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
             f'<line x1="{pad}" y1="{h - pad}" x2="{w - 20}" y2="{h - pad}" stroke="black"/>',
             f'<line x1="{pad}" y1="{h - pad}" x2="{pad}" y2="20" stroke="black"/>',
             f'<text x="{w / 2}" y="{h - 10}" text-anchor="middle">training rows</text>',
             f'<text x="15" y="{h / 2}" transform="rotate(-90 15 {h / 2})" text-anchor="middle">fraction of the 4x value</text>']
    for i, (label, (key, color)) in enumerate(series.items()):
        ymax = max(r[key] for r in rows)
        pts = [(pad + (w - pad - 20) * r["rows"] / xmax, h - pad - (h - pad - 20) * r[key] / ymax) for r in rows]
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in pts)}"/>')
        parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>' for x, y in pts]
        parts.append(f'<text x="{pad + 10}" y="{30 + 16 * i}" fill="{color}">{label}</text>')
    for r in rows:
        x = pad + (w - pad - 20) * r["rows"] / xmax
        parts.append(f'<text x="{x:.1f}" y="{h - pad + 15}" text-anchor="middle">{r["rows"]}</text>')
    path.write_text("\n".join(parts + ["</svg>"]) + "\n")


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
            result = extract_cache(teacher_dir(), splits, out, layers=[2, 4, 6], dtype="float16", batch_size=64,
                                   shard_max_bytes=64 << 20, device="cpu", max_length=64, label_names=info["label_names"],
                                   dataset_fingerprints=fingerprints(info))
        m = result["manifest"]
        rows.append({"scale": scale, "rows": m["splits"]["train"]["rows"], "tokens": m["splits"]["train"]["tokens"],
                     "seconds": round(t.seconds, 2), "cache_mb": round(m["bytes"] / 1e6, 2),
                     "shards": len(m["splits"]["train"]["shards"])})
        shutil.rmtree(out)
    with open(RESULTS / "scaling.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    svg_plot(rows, RESULTS / "scaling.svg")
    base = rows[0]
    save("scaling", {"figure": "extraction time and cache size vs corpus size", "table": rows,
                     "seconds_per_1k_tokens": [round(1000 * r["seconds"] / r["tokens"], 4) for r in rows],
                     "mb_per_1k_tokens": [round(1000 * r["cache_mb"] / r["tokens"], 4) for r in rows],
                     "time_ratio_4x_over_1x": round(rows[-1]["seconds"] / base["seconds"], 3),
                     "size_ratio_4x_over_1x": round(rows[-1]["cache_mb"] / base["cache_mb"], 3),
                     "token_ratio_4x_over_1x": round(rows[-1]["tokens"] / base["tokens"], 3)})


if __name__ == "__main__":
    main()
