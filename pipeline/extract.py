"""Stage one: run the fine-tuned teacher once over the prepared splits and write its outputs to the cache."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import datasets
import numpy as np
import torch
import transformers
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from pipeline.cache import CacheBatch, CacheWriter, FieldSpec, hidden_field
from pipeline.cache.schema import TEACHER_CONFIG, TOKENIZER_DIR
from pipeline.errors import PipelineError
from pipeline.models import model_fingerprint, tokenizer_fingerprint

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PipelineError(f"params.yaml: extract.device is '{name}' but no CUDA device is visible; use 'auto' or 'cpu'")
    return torch.device(name)


def normalize_layers(layers: list[int], num_hidden_layers: int) -> list[int]:
    """hidden_states indices (0 = embeddings, N = last layer; negative from the end) -> sorted unique 0..N."""
    out = []
    for layer in layers:
        index = layer + num_hidden_layers + 1 if layer < 0 else layer
        if not 0 <= index <= num_hidden_layers:
            raise PipelineError(f"params.yaml: extract.layers has {layer}, out of range: the teacher has hidden states "
                                f"0 (embeddings) .. {num_hidden_layers} (last layer)")
        out.append(index)
    return sorted(set(out))


def length_sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Row indices grouped into batches of similar length, so padding waste is small."""
    order = np.argsort(lengths, kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _to_storage(t: torch.Tensor, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return t.to(torch.bfloat16).view(torch.int16).cpu().numpy().view(np.uint16)
    return t.to(torch.float16).cpu().numpy()


def extract_cache(teacher_dir: Path, splits: dict[str, datasets.Dataset], out_dir: Path, *, layers: list[int], dtype: str,
                  batch_size: int, shard_max_bytes: int, device: str, max_length: int, label_names: list[str],
                  dataset_fingerprints: dict[str, str]) -> dict:
    """Write the cache for `splits` to `out_dir` (replacing what is there). Returns the manifest plus timing stats."""
    teacher_dir, out_dir = Path(teacher_dir), Path(out_dir)
    dev = resolve_device(device)
    model = AutoModelForSequenceClassification.from_pretrained(teacher_dir).to(dev).eval()
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    n_layers, hidden = model.config.num_hidden_layers, model.config.hidden_size
    layers = normalize_layers(layers, n_layers)
    fields = [FieldSpec("logits", "example", "float32", model.config.num_labels)]
    fields += [FieldSpec(hidden_field(layer), "token", dtype, hidden) for layer in layers]

    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    tokenizer.save_pretrained(out_dir / TOKENIZER_DIR)
    shutil.copy(teacher_dir / "config.json", out_dir / TEACHER_CONFIG)
    meta = {
        "teacher": {**model_fingerprint(teacher_dir), "model_type": model.config.model_type, "num_hidden_layers": n_layers},
        "tokenizer": {"fingerprint": tokenizer_fingerprint(tokenizer), "dir": TOKENIZER_DIR},
        "max_length": max_length, "layers": layers, "hidden_size": hidden, "dtype": dtype, "label_names": label_names,
        "dataset": dataset_fingerprints,
        "versions": {"torch": torch.__version__.split("+")[0], "transformers": transformers.__version__},
    }
    pad_id = tokenizer.pad_token_id or 0
    stats = {}
    with CacheWriter(out_dir, fields, meta, shard_max_bytes) as writer:
        for split, ds in splits.items():
            table = ds.data.table if hasattr(ds.data, "table") else ds.data
            lengths = table.column("length").to_numpy()
            ids_col = table.column("input_ids").combine_chunks()
            offsets, flat_ids = ids_col.offsets.to_numpy(), ids_col.values.to_numpy()
            example_ids, labels = table.column("example_id").to_numpy(), table.column("label").to_numpy()
            batches = length_sorted_batches(lengths, batch_size)
            padded = real = 0
            start = time.perf_counter()
            for rows in tqdm(batches, desc=f"extract {split}", unit="batch"):
                width = int(lengths[rows].max())
                input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
                for j, r in enumerate(rows):  # one slice copy per row to pad; the model call dominates
                    input_ids[j, :lengths[r]] = flat_ids[offsets[r]:offsets[r + 1]]
                ids_t = torch.from_numpy(input_ids).to(dev, non_blocking=True)
                mask = (torch.arange(width)[None, :] < torch.from_numpy(lengths[rows].astype(np.int64))[:, None]).to(dev)
                with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                    out = model(input_ids=ids_t, attention_mask=mask.long(), output_hidden_states=True)
                fields_out = {"logits": out.logits.float().cpu().numpy()}
                for layer in layers:
                    fields_out[hidden_field(layer)] = _to_storage(out.hidden_states[layer][mask], dtype)
                writer.write(split, CacheBatch(example_id=example_ids[rows], length=lengths[rows], label=labels[rows],
                                               input_ids=ids_t[mask].cpu().numpy().astype(np.int32), fields=fields_out))
                padded += len(rows) * width
                real += int(lengths[rows].sum())
            stats[split] = {"seconds": time.perf_counter() - start, "rows": len(ds), "tokens": real,
                            "padding_fraction": 1 - real / max(padded, 1)}
        manifest = writer.close()
    return {"manifest": manifest, "stats": stats}


def write_extract_report(path: Path, result: dict) -> None:
    manifest = result["manifest"]
    tokens = sum(s["tokens"] for s in manifest["splits"].values())
    report = {"bytes": manifest["bytes"], "tokens": tokens, "bytes_per_token": manifest["bytes"] / max(tokens, 1),
              "bytes_per_token_per_layer": manifest["bytes"] / max(tokens, 1) / max(len(manifest["layers"]), 1),
              "shards": sum(len(s["shards"]) for s in manifest["splits"].values()), "splits": result["stats"]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
