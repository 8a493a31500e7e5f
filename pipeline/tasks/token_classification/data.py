"""Token classification's data: sentences tokenized into sub-words with their word tags aligned, the transfer
sentences, and the split fingerprint that covers the token labels."""

from __future__ import annotations

import hashlib
import logging

import datasets
import numpy as np

from pipeline.data import TUNE, split_fingerprint, split_limit
from pipeline.errors import PipelineError
from pipeline.sources import LOCAL_FORMATS, parse_source
from pipeline.tasks import TOKEN_CLASSIFICATION
from pipeline.tasks.sequence_classification.data import SequenceClassificationData
from pipeline.tasks.token_classification import IGNORE, TOKEN_LABELS, TokenClassificationConfig
from pipeline.tasks.token_classification.conll import CONLL_SUFFIXES, check_iob2, infer_tag_names, load_sentences

log = logging.getLogger(__name__)
UNLABELED = -1  # a token-classification row has no example label


def align_labels(word_ids: list[int | None], word_labels: list[int], label_all: bool, b_to_i: dict[int, int]) -> list[int]:
    """Word labels -> sub-word labels: the first sub-word of each word gets its word's label; later sub-words get
    IGNORE, or with `label_all` the word's label (a B- label becomes its I- label, as HF's `label_all_tokens` does);
    special tokens get IGNORE."""
    out, previous = [], None
    for w in word_ids:
        if w is None:
            out.append(IGNORE)
        elif w != previous:
            out.append(word_labels[w])
        else:
            out.append(b_to_i.get(word_labels[w], word_labels[w]) if label_all else IGNORE)
        previous = w
    return out


def tokenize_sentences(source, words, tags, tag_names, tokenizer, data, limit, seed, label_all: bool):
    rows = np.arange(len(words), dtype=np.int64)
    if limit is not None and limit < len(rows):
        rows = np.sort(np.random.default_rng(seed).permutation(len(rows))[:limit])
    index = {t: i for i, t in enumerate(tag_names)}
    b_to_i = {i: index.get("I-" + t[2:], i) for t, i in index.items() if t.startswith("B-")}
    enc = tokenizer([words[r] for r in rows], is_split_into_words=True, truncation=True, max_length=data.max_length)
    ids, labels, truncated = [], [], 0
    for j, r in enumerate(rows):
        word_ids = enc.word_ids(j)
        kept = {w for w in word_ids if w is not None}
        truncated += len(kept) < len(words[r])
        ids.append(enc["input_ids"][j])
        labels.append(align_labels(word_ids, [index[t] for t in tags[r]], label_all, b_to_i))
    if truncated:
        log.warning(
            "%s: %d of %d sentences are longer than max_length=%d tokens and were truncated (their last words are "
            "neither trained on nor scored)",
            source.spec,
            truncated,
            len(rows),
            data.max_length,
        )
    prepared = token_split(rows, ids, labels)
    stats = {
        "source": source.spec,
        "rows_in_source": len(words),
        "rows": len(prepared),
        "truncated": truncated,
        "tokens": int(sum(len(i) for i in ids)),
        "fingerprint": token_split_fingerprint(prepared),
    }
    return prepared, stats


def transfer_sentences(source, words, splits, tokenizer, data, seed):
    """Unlabeled sentences (tags ignored) minus any that tokenize like a train or dev row, minus repeats."""
    enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=data.max_length)["input_ids"]
    held_out = {tuple(e) for name in ("train", "dev", TUNE) if name in splits for e in splits[name]["input_ids"]}
    keep, seen = [], set()
    for row, e in enumerate(enc):
        if tuple(e) not in held_out and tuple(e) not in seen:
            seen.add(tuple(e))
            keep.append(row)
    rows = np.asarray(keep, dtype=np.int64)
    if data.max_transfer_examples is not None and data.max_transfer_examples < len(rows):
        rows = np.sort(np.random.default_rng(seed + 1).permutation(rows)[: data.max_transfer_examples])
    if not len(rows):
        raise PipelineError(f"{source.spec}: no transfer sentences left after removing those in train or dev")
    ids = [enc[r] for r in rows]
    prepared = token_split(rows, ids, [[IGNORE] * len(i) for i in ids])
    stats = {
        "source": source.spec,
        "rows_in_source": len(words),
        "overlap_removed": len(words) - len(keep),
        "rows": len(prepared),
        "truncated": 0,
        "tokens": int(sum(len(i) for i in ids)),
        "fingerprint": token_split_fingerprint(prepared),
    }
    return prepared, stats


def token_split(rows: np.ndarray, ids: list[list[int]], labels: list[list[int]]) -> datasets.Dataset:
    return datasets.Dataset.from_dict(
        {
            "example_id": np.asarray(rows, dtype=np.int64),
            "input_ids": [np.asarray(e, dtype=np.int32) for e in ids],
            "length": np.array([len(e) for e in ids], dtype=np.int32),
            "label": np.full(len(ids), UNLABELED, dtype=np.int64),
            TOKEN_LABELS: [np.asarray(y, dtype=np.int32) for y in labels],
        },
        features=datasets.Features(
            {
                "example_id": datasets.Value("int64"),
                "input_ids": datasets.List(datasets.Value("int32")),
                "length": datasets.Value("int32"),
                "label": datasets.Value("int64"),
                TOKEN_LABELS: datasets.List(datasets.Value("int32")),
            }
        ),
    )


def token_split_fingerprint(ds: datasets.Dataset) -> str:
    """The sequence classifier's fingerprint (ids, token ids, labels) plus the token labels."""
    h = hashlib.sha256(split_fingerprint(ds).encode())
    table = ds.data.table if hasattr(ds.data, "table") else ds.data
    column = table.column(TOKEN_LABELS).combine_chunks()
    h.update(np.ascontiguousarray(column.flatten().to_numpy()).astype(np.int32).tobytes())
    return h.hexdigest()


class TokenClassificationData(SequenceClassificationData):
    name = TOKEN_CLASSIFICATION
    config_class = TokenClassificationConfig

    def split_fingerprint(self, ds) -> str:
        return token_split_fingerprint(ds)

    def prepare(self, data, tokenizer, seed: int):
        if not getattr(tokenizer, "is_fast", False):
            raise PipelineError("token classification needs a fast tokenizer (word ids for label alignment)")
        formats = CONLL_SUFFIXES + tuple(LOCAL_FORMATS)
        sources = {"train": parse_source(data.train, formats), "dev": parse_source(data.dev, formats)}
        if data.val is not None:
            sources[TUNE] = parse_source(data.val, formats)
        loaded = {name: load_sentences(source, data) for name, source in sources.items()}
        tag_names = list(data.label_names) if data.label_names else infer_tag_names(loaded["train"][1])
        if any(not (t == "O" or t[:2] in ("B-", "I-")) for t in tag_names):
            raise PipelineError(f"params.yaml: data.label_names {tag_names} are not IOB2 tags (O, B-X, I-X)")
        splits, stats = {}, {}
        for name, source in sources.items():
            words, tags, where = loaded[name]
            for w, t, loc in zip(words, tags, where):
                check_iob2(w, t, loc, tag_names)
            limit = split_limit(data, name)
            splits[name], stats[name] = tokenize_sentences(
                source, words, tags, tag_names, tokenizer, data, limit, seed, self.config.label_all_tokens
            )
        if data.transfer is not None:
            source = parse_source(data.transfer, formats)
            words, _, _ = load_sentences(source, data)
            splits["transfer"], stats["transfer"] = transfer_sentences(source, words, splits, tokenizer, data, seed)
        info = {"label_names": tag_names, "max_length": data.max_length, "splits": stats, "task": self.name}
        return splits, info
