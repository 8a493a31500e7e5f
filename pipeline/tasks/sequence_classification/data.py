"""Sequence classification's data: labelled texts read through `datasets`, label-mapped, tokenized and fingerprinted;
the tuning split carved by whole sentence; the unlabeled transfer texts."""

from __future__ import annotations

import logging

import datasets
import numpy as np

from pipeline.config import DataConfig
from pipeline.data import TUNE, UNLABELED, add_tuning_split, split_fingerprint, split_limit, tokenized_split, unframed
from pipeline.errors import PipelineError
from pipeline.sources import (
    Source,
    check_columns,
    example_ids,
    infer_label_names,
    load_source,
    map_labels,
    parse_source,
    validate_texts,
)
from pipeline.tasks import SEQUENCE_CLASSIFICATION, Configured
from pipeline.tuning import TuningLinks, carve_by_sentence

log = logging.getLogger(__name__)


def prepare_split(
    source: Source, ds: datasets.Dataset, tokenizer, data: DataConfig, label_names: list[str], max_examples: int | None, seed: int
) -> tuple[datasets.Dataset, dict]:
    """Validate, subsample, map labels and tokenize one loaded split (columns, ids and max length as `data` says).
    Returns the prepared dataset and its stats."""
    texts, labels, ids = read_split(source, ds, data, label_names)
    rows = np.arange(len(texts), dtype=np.int64)
    if max_examples is not None and max_examples < len(rows):
        rows = np.sort(np.random.default_rng(seed).permutation(len(rows))[:max_examples])
    return encode_rows(source, texts, labels, ids, rows, tokenizer, data)


def read_split(source: Source, ds: datasets.Dataset, data: DataConfig, label_names: list[str]):
    """A loaded split's texts (validated), label indices and example ids."""
    texts = [t if t is None or isinstance(t, str) else str(t) for t in ds[data.text_column]]  # numbers are text too
    validate_texts(texts, source, data.text_column)
    labels = map_labels(ds[data.label_column], label_names, source, data.label_column)
    return texts, labels, example_ids(ds, source, data.id_column)


def encode_rows(
    source: Source, texts: list[str], labels: np.ndarray, ids: np.ndarray, rows: np.ndarray, tokenizer, data: DataConfig
) -> tuple[datasets.Dataset, dict]:
    """The prepared split of `rows` (indices into the read split) and its stats; truncation is counted and logged."""
    max_length = data.max_length
    chosen = [texts[i] for i in rows]
    full = tokenizer(chosen, truncation=False, add_special_tokens=True)["input_ids"]
    enc = tokenizer(chosen, truncation=True, max_length=max_length)["input_ids"]
    truncated = int(sum(len(f) > max_length for f in full))
    if truncated:
        log.warning(
            "%s: %d of %d texts are longer than max_length=%d tokens and were truncated",
            source.spec,
            truncated,
            len(chosen),
            max_length,
        )
    prepared = tokenized_split(ids[rows], enc, labels[rows])
    stats = {
        "source": source.spec,
        "rows_in_source": len(texts),
        "rows": len(prepared),
        "truncated": truncated,
        "tokens": int(prepared.data.column("length").to_numpy().sum()),
        "fingerprint": split_fingerprint(prepared),
    }
    return prepared, stats


def prepare_corpus(data, tokenizer, seed: int) -> tuple[dict[str, datasets.Dataset], dict]:
    """Load, validate and tokenize the train and dev splits named by a `DataConfig`. Returns splits and info.json."""
    sources = {"train": parse_source(data.train), "dev": parse_source(data.dev)}
    if getattr(data, "val", None) is not None:
        sources[TUNE] = parse_source(data.val)
    loaded = {}
    for name, source in sources.items():
        loaded[name] = load_source(source)
        columns = {"data.text_column": data.text_column, "data.label_column": data.label_column}
        if data.id_column is not None:
            columns["data.id_column"] = data.id_column
        check_columns(loaded[name], source, columns)
    label_names = data.label_names or infer_label_names(loaded["train"][data.label_column])
    if len(label_names) < 2:
        raise PipelineError(
            f"{data.train}: only {len(label_names)} distinct label(s) {label_names} in column "
            f"'{data.label_column}'; a classifier needs at least two"
        )
    splits, stats, links = {}, {}, None
    for name, source in sources.items():
        if name == "train" and data.val is None and data.val_examples:
            continue  # after dev: the tuning split is carved from the whole train file, away from dev's texts
        splits[name], stats[name] = prepare_split(
            source, loaded[name], tokenizer, data, label_names, split_limit(data, name), seed
        )
    if "train" not in splits:
        splits, stats, links = carve_tuning_split(
            sources["train"], loaded["train"], splits, stats, tokenizer, data, label_names, seed
        )
    if data.transfer is not None:
        splits["transfer"], stats["transfer"] = prepare_transfer(
            parse_source(data.transfer),
            data,
            tokenizer,
            seed,
            loaded["train"],
            sources["train"],
            splits["train"],
            loaded["dev"],
            splits.get(TUNE),
            links,
        )
    info = {"label_names": label_names, "max_length": data.max_length, "splits": stats}
    return splits, info


def carve_tuning_split(
    source: Source, ds: datasets.Dataset, splits: dict, stats: dict, tokenizer, data, label_names: list[str], seed: int
) -> tuple[dict, dict, TuningLinks]:
    """The train and tuning splits from the whole train file: `data.val_examples` whole sentences (rows no other row
    contains, none a dev text) drawn first (`pipeline.tuning`), the rows found only inside them dropped, then
    `data.max_train_examples` labelled rows drawn from what is left. Returns the splits and stats with train and val in
    order, and the links that keep the tuning sentences out of the transfer rows."""
    texts, labels, ids = read_split(source, ds, data, label_names)
    rows = unframed(tokenizer(texts, truncation=True, max_length=data.max_length)["input_ids"], tokenizer)
    dev = {tuple(e) for e in unframed(splits["dev"]["input_ids"], tokenizer)}
    chosen, pool, links, eligible = carve_by_sentence(rows, dev, data.val_examples, seed + 2)
    if not len(chosen):
        raise PipelineError(
            f"params.yaml: data.val_examples={data.val_examples} but only {eligible} of the {len(texts)} rows of "
            f"{source.spec} are whole sentences (distinct, inside no other row, not a dev text); lower "
            "data.val_examples or point data.val at a labelled file"
        )
    pool = np.flatnonzero(pool)
    train_rows = pool
    if data.max_train_examples is not None and data.max_train_examples < len(pool):
        train_rows = np.sort(np.random.default_rng(seed).permutation(pool)[: data.max_train_examples])
    splits["train"], stats["train"] = encode_rows(source, texts, labels, ids, train_rows, tokenizer, data)
    splits[TUNE], stats[TUNE] = encode_rows(source, texts, labels, ids, chosen, tokenizer, data)
    stats["train"]["tuning_rows_removed"] = int(len(texts) - len(pool))
    stats[TUNE]["source"] = f"{source.spec} ({len(chosen)} whole sentences of {eligible}, carved before train)"
    order = ("train", "dev", TUNE)
    return {k: splits[k] for k in order}, {k: stats[k] for k in order}, links


def prepare_transfer(
    source: Source,
    data,
    tokenizer,
    seed: int,
    train_ds: datasets.Dataset,
    train_source: Source,
    train_prepared: datasets.Dataset,
    dev_ds: datasets.Dataset,
    tune_prepared: datasets.Dataset | None = None,
    links: TuningLinks | None = None,
) -> tuple[datasets.Dataset, dict]:
    """The unlabeled transfer split: texts only (any label column is ignored), minus every text that tokenizes like a
    tuning-split row or is tied to a tuning sentence (`links`: found only inside tuning sentences, or holding one), a dev
    text (no leakage into dev metrics) or a labeled training example (no double counting) and minus repeats, then a
    seeded subset. Pointing `data.transfer` at the training file itself turns the rows that max_train_examples left
    out into the transfer set."""
    same_as_train = (
        source.path is not None and train_source.path is not None and source.path.resolve() == train_source.path.resolve()
    )
    ds = train_ds if same_as_train else load_source(source)
    check_columns(ds, source, {"data.text_column": data.text_column})
    texts = [t if t is None or isinstance(t, str) else str(t) for t in ds[data.text_column]]
    validate_texts(texts, source, data.text_column)
    encode = lambda batch: tokenizer(batch, truncation=True, max_length=data.max_length)["input_ids"]  # noqa: E731
    enc = encode(texts)
    dev_texts = [str(t) for t in dev_ds[data.text_column]]
    held_out = {tuple(e) for e in encode(dev_texts)} | {tuple(e) for e in train_prepared["input_ids"]}
    held_out |= {tuple(e) for e in (tune_prepared["input_ids"] if tune_prepared is not None else [])}
    tied = links.mask(unframed(enc, tokenizer)) if links is not None else np.zeros(len(enc), bool)
    keep, seen = [], set()
    for row, ids in enumerate(enc):
        key = tuple(ids)
        if key not in held_out and key not in seen and not tied[row]:
            seen.add(key)
            keep.append(row)
    rows = np.asarray(keep, dtype=np.int64)
    if data.max_transfer_examples is not None and data.max_transfer_examples < len(rows):
        rows = np.sort(np.random.default_rng(seed + 1).permutation(rows)[: data.max_transfer_examples])
    if not len(rows):
        raise PipelineError(
            f"{source.spec}: no transfer texts left after removing those also in train or dev; point "
            "data.transfer at other texts or set it to null"
        )
    enc = [enc[i] for i in rows]
    prepared = tokenized_split(example_ids(ds, source, data.id_column)[rows], enc, np.full(len(rows), UNLABELED))
    stats = {
        "source": source.spec,
        "rows_in_source": len(texts),
        "overlap_removed": len(texts) - len(keep),
        "rows": len(prepared),
        "truncated": int(sum(len(e) > data.max_length for e in tokenizer([texts[i] for i in rows])["input_ids"])),
        "tokens": int(prepared.data.column("length").to_numpy().sum()),
        "fingerprint": split_fingerprint(prepared),
    }
    return prepared, stats


class SequenceClassificationData(Configured):
    """The prepare stage's facet of a task."""

    name = SEQUENCE_CLASSIFICATION

    def prepare(self, data, tokenizer, seed: int):
        """Read, validate and tokenize the train and dev (and transfer) splits: (splits, info)."""
        return prepare_corpus(data, tokenizer, seed)

    def tuning_split(self, splits: dict, info: dict, data, seed: int):
        """The tuning split `val` (`pipeline.data.add_tuning_split`), for a task whose prepare has not made it."""
        return add_tuning_split(splits, info, data, seed, self.split_fingerprint)

    def split_fingerprint(self, ds: datasets.Dataset) -> str:
        """The digest of a prepared split (what its cache rows derive from) the manifest records."""
        return split_fingerprint(ds)
