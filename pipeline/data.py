"""Prepared splits, whatever the task: their columns, fingerprints, saving and loading, the tuning split carved from
prepared rows, and teacher-labelled augmentation. Each task's reading and tokenizing is its data facet
(`pipeline.tasks.<task>.data`)."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import datasets
import numpy as np

from pipeline.errors import PipelineError
from pipeline.splits import TUNE

log = logging.getLogger(__name__)

PREPARED_COLUMNS = ("example_id", "input_ids", "length", "label")
AUGMENT = "augment"  # teacher-labelled variants of the labelled train texts (unlabeled rows, like transfer)


def tokenized_split(ids: np.ndarray, enc: list[list[int]], labels: np.ndarray) -> datasets.Dataset:
    return datasets.Dataset.from_dict(
        {
            "example_id": ids,
            "input_ids": [np.asarray(e, dtype=np.int32) for e in enc],
            "length": np.array([len(e) for e in enc], dtype=np.int32),
            "label": labels,
        },
        features=datasets.Features(
            {
                "example_id": datasets.Value("int64"),
                "input_ids": datasets.List(datasets.Value("int32")),
                "length": datasets.Value("int32"),
                "label": datasets.Value("int64"),
            }
        ),
    )


def _frame(tokenizer) -> set[int]:
    """The tokens a tokenizer adds around a text ([UNK] is not one: it stands for a word)."""
    return {t for t in (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id) if t is not None}


def unframed(encoded, tokenizer) -> list[list[int]]:
    """Token rows without the tokens the tokenizer added around each text."""
    frame = _frame(tokenizer)
    return [[int(t) for t in e if t not in frame] for e in encoded]


def split_limit(data, name: str) -> int | None:
    """The seeded-subset size of a split read from its own source (`data.val_examples` 0 = all of data.val)."""
    if name == "train":
        return data.max_train_examples
    return (data.val_examples or None) if name == TUNE else data.max_dev_examples


UNLABELED = -1  # the label of a transfer row: the teacher's outputs are its only target


def split_fingerprint(ds: datasets.Dataset) -> str:
    """sha256 over what a cache row is derived from: ids, token ids and labels."""
    table = ds.data.table if hasattr(ds.data, "table") else ds.data
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(table.column("example_id").to_numpy()).tobytes())
    tokens = table.column("input_ids").combine_chunks()
    h.update(np.ascontiguousarray(tokens.offsets.to_numpy() - tokens.offsets[0].as_py()).tobytes())
    h.update(np.ascontiguousarray(tokens.flatten().to_numpy()).astype(np.int32).tobytes())
    h.update(np.ascontiguousarray(table.column("label").to_numpy()).tobytes())
    return h.hexdigest()


def save_prepared(out_dir: Path, splits: dict[str, datasets.Dataset], info: dict) -> None:
    """Each split with save_to_disk plus info.json, replacing whatever `out_dir` held."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, ds in splits.items():
        ds.save_to_disk(str(out_dir / name))
    (out_dir / "info.json").write_text(json.dumps(info, indent=2) + "\n")


def load_prepared(prepared_dir: Path) -> tuple[dict[str, datasets.Dataset], dict]:
    info_path = Path(prepared_dir) / "info.json"
    if not info_path.is_file():
        raise PipelineError(f"{info_path}: prepared data not found; run `dvc repro prepare` first")
    info = json.loads(info_path.read_text())
    splits = {name: datasets.load_from_disk(str(Path(prepared_dir) / name)) for name in info["splits"]}
    return splits, info


def add_tuning_split(
    splits: dict[str, datasets.Dataset], info: dict, data, seed: int, fingerprint=split_fingerprint
) -> tuple[dict[str, datasets.Dataset], dict]:
    """The tuning split `val`, sharing no text with dev or the labelled train rows. With `data.val` (already prepared by
    the task) its rows that tokenize like a dev or train row are dropped. Else, when the task has not carved it by
    sentence already (`carve_tuning_split`, text tasks), `data.val_examples` seeded rows are moved out of the prepared
    train split, chosen among rows whose tokens no dev row, other train row or other chosen row has (so no copy of a
    tuning text stays in train). Nothing happens when neither is asked for."""
    if TUNE in splits and data.val is None:
        return splits, info  # carved by sentence from the whole train file
    if TUNE in splits:
        taken = {tuple(e) for name in ("train", "dev") for e in splits[name]["input_ids"]}
        keep = [i for i, e in enumerate(splits[TUNE]["input_ids"]) if tuple(e) not in taken]
        dropped = len(splits[TUNE]) - len(keep)
        if dropped:
            log.warning("%s: %d tuning rows also in train or dev were dropped", data.val, dropped)
        if not keep:
            raise PipelineError(f"{data.val}: every data.val row is also in train or dev; point data.val at other rows")
        splits[TUNE] = splits[TUNE].select(keep).flatten_indices()
        info["splits"][TUNE].update(overlap_removed=dropped, **_size_stats(splits[TUNE], fingerprint))
        return splits, info
    if not data.val_examples:
        return splits, info
    train = splits["train"]
    tokens = [tuple(e) for e in train["input_ids"]]
    dev = {tuple(e) for e in splits["dev"]["input_ids"]}
    counts: dict[tuple, int] = {}
    for t in tokens:
        counts[t] = counts.get(t, 0) + 1
    eligible = np.array([i for i, t in enumerate(tokens) if counts[t] == 1 and t not in dev], dtype=np.int64)
    if len(eligible) <= data.val_examples:
        raise PipelineError(
            f"params.yaml: data.val_examples={data.val_examples} but only {len(eligible)} of the {len(train)} prepared "
            "train rows are unique and not in dev; lower data.val_examples, raise data.max_train_examples, or point "
            "data.val at a labelled file"
        )
    chosen = np.sort(np.random.default_rng(seed + 2).permutation(eligible)[: data.val_examples])
    rest = np.setdiff1d(np.arange(len(train)), chosen)
    splits[TUNE], splits["train"] = train.select(chosen).flatten_indices(), train.select(rest).flatten_indices()
    source = info["splits"]["train"]["source"]
    info["splits"][TUNE] = {"source": f"{source} (carved from the prepared train rows)", "rows_in_source": len(train)}
    info["splits"][TUNE].update(_size_stats(splits[TUNE], fingerprint))
    info["splits"]["train"].update(_size_stats(splits["train"], fingerprint))
    # the tuning split goes right after train and dev: the order stages list splits in
    info["splits"] = {k: info["splits"][k] for k in ("train", "dev", TUNE, *info["splits"]) if k in info["splits"]}
    return splits, info


def _size_stats(ds: datasets.Dataset, fingerprint) -> dict:
    return {"rows": len(ds), "tokens": int(np.sum(ds["length"])), "fingerprint": fingerprint(ds)}


def edit_words(words: list[str], vocab: list[str], rate: float, rng: np.random.Generator) -> list[str]:
    """One seeded variant of a sentence: each word replaced by a random vocabulary word (rate / 2) or deleted
    (rate / 2), then one adjacent pair swapped (rate); at least one word is changed."""
    out = []
    for w in words:
        u = rng.random()
        if u < rate / 2:
            out.append(vocab[rng.integers(len(vocab))])
        elif u >= rate or len(words) == 1:
            out.append(w)
    if len(out) > 1 and rng.random() < rate:
        i = int(rng.integers(len(out) - 1))
        out[i], out[i + 1] = out[i + 1], out[i]
    if out == words or not out:
        out = list(words)
        out[int(rng.integers(len(out)))] = vocab[rng.integers(len(vocab))]
    return out


def add_augmented_split(
    splits: dict[str, datasets.Dataset], info: dict, data, tokenizer, seed: int, fingerprint=split_fingerprint
) -> tuple[dict[str, datasets.Dataset], dict]:
    """The `augment` split: `data.augment_copies` seeded word-edited variants (`edit_words`) of every labelled train
    text (decoded from its tokens), unlabeled, for the teacher to label in extract. A variant that tokenizes like a
    train, tuning, dev or transfer row, or like an earlier variant, is dropped, so no augmented row is a dev text.
    Ids: train id * copies + copy."""
    if not data.augment_copies:
        return splits, info
    train = splits["train"]
    texts = [tokenizer.decode(e) for e in unframed(train["input_ids"], tokenizer)]
    sentences = [t.split() for t in texts]
    vocab = sorted({w for s in sentences for w in s})
    rng = np.random.default_rng(seed + 3)
    variants, ids = [], []
    for copy in range(data.augment_copies):
        for example_id, words in zip(train["example_id"], sentences):
            if words:
                variants.append(" ".join(edit_words(words, vocab, data.augment_rate, rng)))
                ids.append(example_id * data.augment_copies + copy)
    enc = tokenizer(variants, truncation=True, max_length=data.max_length)["input_ids"]
    seen = {tuple(e) for ds in splits.values() for e in ds["input_ids"]}
    keep = []
    for row, e in enumerate(enc):
        if tuple(e) not in seen:
            seen.add(tuple(e))
            keep.append(row)
    order = sorted(keep, key=lambda r: ids[r])
    splits[AUGMENT] = tokenized_split(
        np.asarray([ids[r] for r in order], dtype=np.int64), [enc[r] for r in order], np.full(len(order), UNLABELED)
    )
    info["splits"][AUGMENT] = {
        "source": f"{data.augment_copies} seeded word-edited copies (rate {data.augment_rate}) of the labelled train texts",
        "rows_in_source": len(variants),
        "overlap_removed": len(variants) - len(keep),
        **_size_stats(splits[AUGMENT], fingerprint),
    }
    return splits, info
