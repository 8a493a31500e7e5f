"""Shared fixtures: tiny random BERT teachers with a real word-piece tokenizer, and a few hundred real SST-2 rows.

Fixtures shrink the real thing (real data, real code paths) instead of mocking it; each test writes in its own tmp_path.
"""

from __future__ import annotations

import collections
import os
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):  # `pytest -n 2`: one core per worker, for its stage subprocesses too
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification, BertTokenizerFast

from pipeline.config import DataConfig, ExtractConfig
from pipeline.data import save_prepared
from pipeline.extract import extract_cache
from pipeline.models import load_teacher
from pipeline.tasks.heads import head_of
from pipeline.tasks.masked_lm import MaskedLMConfig
from pipeline.tasks.sequence_classification.data import prepare_corpus

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT / "data" / "raw" / "sst2"  # ships with the project: tests never lack it
SAMPLES = ROOT / "tests" / "data"  # small CoNLL-format and SQuAD samples the repo ships (tests/data/README.md)
REAL_DATA_ENV = "KD_REAL_DATA"  # the one setting: a folder with the full sst2/, conll2003/, squad/ files (.ci/run sets it)


def real_data(name: str) -> Path:
    """The full files of data set `name` under $KD_REAL_DATA; the test is skipped, with the reason, when they are absent."""
    root = os.environ.get(REAL_DATA_ENV)
    if not root:
        pytest.skip(f"needs the full {name} files: set {REAL_DATA_ENV} to a folder holding {name}/ (CI: ../shared/data)")
    folder = Path(root).resolve() / name
    if not folder.is_dir():
        pytest.skip(f"{REAL_DATA_ENV}={root} has no {name}/ folder")
    return folder


def load_classifier(path: str, label_names: list[str], require_head: bool = False):
    """A sequence classifier from a dir, as the teacher stage loads it (what the tests of loading refusals call)."""
    return load_teacher(head_of("sequence_classification"), path, label_names, require_head=require_head)


needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def sst2_rows(split: str, n: int) -> list[str]:
    lines = (SST2 / f"{split}.tsv").read_text(encoding="utf-8").splitlines()
    return lines[: n + 1]  # header + n rows


@pytest.fixture(scope="session")
def sst2_small(tmp_path_factory) -> Path:
    """300 train / 80 dev real SST-2 rows as tsv files."""
    out = tmp_path_factory.mktemp("sst2")
    (out / "train.tsv").write_text("\n".join(sst2_rows("train", 300)) + "\n", encoding="utf-8")
    (out / "dev.tsv").write_text("\n".join(sst2_rows("dev", 80)) + "\n", encoding="utf-8")
    return out


def make_tokenizer(out: Path, sst2_dir: Path) -> BertTokenizerFast:
    words = collections.Counter(
        w for line in (sst2_dir / "train.tsv").read_text().splitlines()[1:] for w in line.split("\t")[1].split()
    )
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [w for w, _ in words.most_common(400)]
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # loaded from the directory: transformers 5's BertTokenizerFast(vocab_file=...) ignores the file (every word [UNK])
    tokenizer = BertTokenizerFast.from_pretrained(out, do_lower_case=True)
    assert tokenizer.unk_token_id not in tokenizer("the film")["input_ids"], "tiny tokenizer lost its vocabulary"
    return tokenizer


def make_tiny_teacher(out: Path, sst2_dir: Path, *, layers: int = 4, hidden: int = 32, heads: int = 4, seed: int = 0) -> Path:
    """A random 4-layer BERT classifier with a word-piece tokenizer over real SST-2 words, saved like the teacher stage does."""
    tokenizer = make_tokenizer(out, sst2_dir)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
        num_labels=2,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
        architectures=["BertForSequenceClassification"],
    )
    BertForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory, sst2_small) -> Path:
    return make_tiny_teacher(tmp_path_factory.mktemp("teacher"), sst2_small)


def data_config(sst2_dir: Path, **overrides) -> DataConfig:
    """The shipped data config shrunk to a small copy of SST-2: no subsetting, no transfer set, 32 tokens."""
    settings = {
        "train": str(sst2_dir / "train.tsv"),
        "dev": str(sst2_dir / "dev.tsv"),
        "label_names": ["negative", "positive"],
        "max_length": 32,
        "max_train_examples": None,
        "transfer": None,
        "max_transfer_examples": None,
        "val_examples": 0,
    }
    return DataConfig(**{**settings, **overrides})


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory, sst2_small, tiny_teacher):
    tokenizer = BertTokenizerFast.from_pretrained(tiny_teacher)
    splits, info = prepare_corpus(data_config(sst2_small), tokenizer, seed=0)
    out = tmp_path_factory.mktemp("prepared")
    save_prepared(out, splits, info)
    return splits, info


def flip_middle_byte(path: Path) -> None:
    """Corrupt a file the way a bad disk or a careless edit would: one byte in its middle inverted."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def build_cache(
    teacher_dir: Path,
    prepared,
    out: Path,
    *,
    layers=(2, 4),
    dtype="float16",
    shard_max_bytes=1 << 16,
    batch_size=16,
    attentions=(),
    values=(),
    device="cpu",
    rank=None,
    rank_sample_rows=2000,
    seed=0,
    relations="maps",
) -> dict:
    splits, info = prepared
    cfg = ExtractConfig(
        layers=list(layers),
        dtype=dtype,
        batch_size=batch_size,
        shard_max_mb=shard_max_bytes / (1 << 20),
        device=device,
        attentions=list(attentions),
        values=list(values),
        rank=rank,
        rank_sample_rows=rank_sample_rows,
        relations=relations,
    )
    return extract_cache(teacher_dir, splits, out, cfg, info=info, mask_seed=seed)


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory, tiny_teacher, tiny_prepared) -> Path:
    out = tmp_path_factory.mktemp("cache") / "cache"
    build_cache(tiny_teacher, tiny_prepared, out)
    return out


def tiny_bert_config(vocab_size: int, **head) -> BertConfig:
    """The tiny teachers' shape: 4 layers of width 32, 4 heads, 128 positions; `head` adds the task's config keys."""
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        **head,
    )


def copy_project(dest: Path) -> Path:
    """The project's tracked and untracked-but-not-ignored files copied to `dest`, as a fresh clone has them."""
    import shutil
    import subprocess

    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


@pytest.fixture(scope="session")
def mlm_teacher(tmp_path_factory, sst2_small) -> Path:
    """A random 4-layer BERT masked-LM (same tiny tokenizer), saved as the teacher stage saves one."""
    out = tmp_path_factory.mktemp("mlm_teacher")
    tokenizer = make_tokenizer(out, sst2_small)
    torch.manual_seed(0)
    BertForMaskedLM(tiny_bert_config(len(tokenizer), architectures=["BertForMaskedLM"])).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_mlm_cache(teacher_dir: Path, prepared, out: Path, *, topk: int = 8, device: str = "cpu", **task) -> dict:
    splits, info = prepared
    cfg = ExtractConfig(layers=[2, 4], dtype="float16", rank=None, batch_size=16, shard_max_mb=1 / 16, device=device)
    knobs = MaskedLMConfig(topk=topk, mlm_probability=0.15, **task)
    return extract_cache(teacher_dir, splits, out, cfg, info=info, mask_seed=3, task_config=knobs)
