"""Token classification (NER, CoNLL-2003): word tags in IOB2 aligned to sub-words, the teacher's logits per real
token in the cache, per-token KD, and entity-level precision / recall / F1 with strict IOB2 matching."""

from __future__ import annotations

import logging
from pathlib import Path

import datasets
import numpy as np
import torch

from pipeline.cache import FieldSpec
from pipeline.data import TUNE, split_limit
from pipeline.errors import PipelineError
from pipeline.losses import LossMix, distillation_loss
from pipeline.sources import LOCAL_FORMATS, Source, parse_source
from pipeline.tasks.base import Task

log = logging.getLogger(__name__)

IGNORE = -100
TOKEN_LABELS, TOKEN_LOGITS = "token_labels", "token_logits"
CONLL_SUFFIXES = (".txt", ".conll", ".iob", ".iob2")
UNLABELED = -1


# ---- reading ------------------------------------------------------------------------------------------------------
def read_conll(path: Path) -> list[tuple[list[str], list[str], int]]:
    """CoNLL-format sentences as (words, tags, line of the first word): one token per line with the word first and the
    NER tag last (`word POS chunk NER`, `word POS NER` or `word NER`), a blank line between sentences, `-DOCSTART-`
    lines skipped. Every token line must have the column count of the file's first one."""
    sentences, words, tags, first, columns = [], [], [], 0, None
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise PipelineError(f"{path}, line {line}: bytes that are not UTF-8; re-encode the file as UTF-8") from None
    for number, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts or parts[0] == "-DOCSTART-":
            if words:
                sentences.append((words, tags, first))
            words, tags = [], []
            continue
        if columns is None:
            if len(parts) < 2:
                raise PipelineError(f"{path}, line {number}: one column; a CoNLL line is `word ... TAG` (word first, tag last)")
            columns = len(parts)
        if len(parts) != columns:
            raise PipelineError(
                f"{path}, line {number}: {len(parts)} columns where the file's lines have {columns}; fix the line "
                "(a word with a space in it, or a missing tag?)"
            )
        if not words:
            first = number
        words.append(parts[0])
        tags.append(parts[-1])
    if words:
        sentences.append((words, tags, first))
    if not sentences:
        raise PipelineError(f"{path}: no sentences; point the params key at a CoNLL file (one `word ... TAG` per line)")
    return sentences


def load_sentences(source: Source, data) -> tuple[list[list[str]], list[list[str]], list[str]]:
    """(words per sentence, tags per sentence, where each sentence is) from a CoNLL file, a json/jsonl/parquet file
    with a words column and a tags column (`data.text_column`, `data.label_column`), or a hub split (tags given as a
    ClassLabel sequence are turned into names)."""
    if source.path is not None and source.path.suffix.lower() in CONLL_SUFFIXES:
        sentences = read_conll(source.path)
        return [s[0] for s in sentences], [s[1] for s in sentences], [f"{source.spec}, line {s[2]}" for s in sentences]
    from pipeline.sources import check_columns, load_source

    ds = load_source(source)
    check_columns(ds, source, {"data.text_column": data.text_column, "data.label_column": data.label_column})
    feature = ds.features[data.label_column]
    inner = getattr(feature, "feature", None)
    names = inner.names if isinstance(inner, datasets.ClassLabel) else None
    words = [list(map(str, w)) for w in ds[data.text_column]]
    tags = [[names[t] for t in row] if names else [str(t) for t in row] for row in ds[data.label_column]]
    return words, tags, [source.where(i) for i in range(len(words))]


def infer_tag_names(tags: list[list[str]]) -> list[str]:
    """O first, then per entity type (sorted) B- before I-."""
    types = sorted({t[2:] for row in tags for t in row if t != "O"})
    return ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")]


def check_iob2(words: list[str], tags: list[str], where: str, tag_names: list[str]) -> None:
    """Every tag known; an I-X only after B-X or I-X (strict IOB2)."""
    known = set(tag_names)
    previous = "O"
    for i, tag in enumerate(tags):
        if tag not in known:
            raise PipelineError(
                f"{where} (word {i + 1} '{words[i]}'): tag '{tag}' is not one of {tag_names}; fix the tag or list it "
                "in data.label_names"
            )
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            raise PipelineError(
                f"{where} (word {i + 1} '{words[i]}'): '{tag}' follows '{previous}', which is not valid IOB2 (an entity "
                f"starts with B-{tag[2:]}); fix the tag, or convert IOB1 files to IOB2"
            )
        previous = tag


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


# ---- scoring ------------------------------------------------------------------------------------------------------
def entities(tags: list[str]) -> set[tuple[str, int, int]]:
    """(type, first, last) of every entity in strict IOB2: B-X starts one and I-X continue it; an I-X that does not
    continue an entity of type X belongs to none."""
    found, current = set(), None
    for i, tag in enumerate(list(tags) + ["O"]):
        if current is not None and not (tag.startswith("I-") and tag[2:] == current[0]):
            found.add((current[0], current[1], i - 1))
            current = None
        if tag.startswith("B-"):
            current = (tag[2:], i)
    return found


def entity_metrics(true_tags: list[list[str]], pred_tags: list[list[str]]) -> dict:
    """Micro precision / recall / F1 over entities (strict IOB2, as seqeval's mode='strict'), F1 per entity type,
    and token accuracy."""
    true_set = {(s, *e) for s, row in enumerate(true_tags) for e in entities(row)}
    pred_set = {(s, *e) for s, row in enumerate(pred_tags) for e in entities(row)}

    def prf(t: set, p: set) -> tuple[float, float, float]:
        hit = len(t & p)
        precision = hit / len(p) if p else 0.0
        recall = hit / len(t) if t else 0.0
        return precision, recall, (2 * precision * recall / (precision + recall) if precision + recall else 0.0)

    precision, recall, f1 = prf(true_set, pred_set)
    tokens = sum(len(r) for r in true_tags)
    correct = sum(a == b for t, p in zip(true_tags, pred_tags) for a, b in zip(t, p))
    out = {"accuracy": correct / tokens if tokens else 0.0, "precision": precision, "recall": recall, "f1": f1}
    for kind in sorted({e[1] for e in true_set | pred_set}):
        out[f"f1_{kind}"] = prf({e for e in true_set if e[1] == kind}, {e for e in pred_set if e[1] == kind})[2]
    out["entities"] = len(true_set)
    return out


def tag_sequences(predictions: list[np.ndarray], labels: list[np.ndarray], id2label: dict) -> tuple[list, list]:
    """Per row, the gold and predicted tag names at the labelled sub-words (labels != IGNORE)."""
    true_tags, pred_tags = [], []
    for p, y in zip(predictions, labels):
        keep = y != IGNORE
        true_tags.append([id2label[int(i)] for i in y[keep]])
        pred_tags.append([id2label[int(i)] for i in p[keep]])
    return true_tags, pred_tags


class TokenClassification(Task):
    name = "token_classification"
    architecture = "BertForTokenClassification"
    pipeline_tag = "token-classification"
    headline = "f1"
    logit_field = TOKEN_LOGITS

    def auto_class(self):
        from transformers import AutoModelForTokenClassification

        return AutoModelForTokenClassification

    def student_class(self):
        from transformers import BertForTokenClassification

        return BertForTokenClassification

    def split_fingerprint(self, ds) -> str:
        return token_split_fingerprint(ds)

    # ---- data ------------------------------------------------------------------------------------------------------
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
            splits[name], stats[name] = self._tokenize(source, words, tags, tag_names, tokenizer, data, limit, seed)
        if data.transfer is not None:
            source = parse_source(data.transfer, formats)
            words, _, _ = load_sentences(source, data)
            splits["transfer"], stats["transfer"] = self._transfer(source, words, splits, tokenizer, data, seed)
        info = {"label_names": tag_names, "max_length": data.max_length, "splits": stats, "task": self.name}
        return splits, info

    def _tokenize(self, source, words, tags, tag_names, tokenizer, data, limit, seed):
        rows = np.arange(len(words), dtype=np.int64)
        if limit is not None and limit < len(rows):
            rows = np.sort(np.random.default_rng(seed).permutation(len(rows))[:limit])
        index = {t: i for i, t in enumerate(tag_names)}
        b_to_i = {i: index.get("I-" + t[2:], i) for t, i in index.items() if t.startswith("B-")}
        label_all = getattr(data, "label_all_tokens", False)
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

    def _transfer(self, source, words, splits, tokenizer, data, seed):
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

    # ---- teacher ---------------------------------------------------------------------------------------------------
    def teacher_trainer_kwargs(self, tokenizer, splits: dict, cfg, seed: int, label_names: list[str]) -> dict:
        from transformers import DataCollatorForTokenClassification

        return {
            "train_dataset": TaggedDataset(splits["train"]),
            "eval_dataset": TaggedDataset(splits["dev"]),
            "data_collator": DataCollatorForTokenClassification(tokenizer),
            **self.trainer_metrics(label_names),
        }

    def trainer_metrics(self, label_names: list[str]) -> dict:
        from pipeline.scoring import argmax_logits

        id2label = dict(enumerate(label_names))

        def compute(eval_pred) -> dict:
            predictions = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
            true_tags, pred_tags = tag_sequences(list(np.asarray(predictions)), list(np.asarray(eval_pred.label_ids)), id2label)
            scores = entity_metrics(true_tags, pred_tags)
            return {k: scores[k] for k in ("accuracy", "precision", "recall", "f1")}

        return {"compute_metrics": compute, "preprocess_logits_for_metrics": argmax_logits}

    # ---- extraction ------------------------------------------------------------------------------------------------
    def manifest_meta(self, setup, cfg) -> dict:
        return {"task": self.name}

    def fields(self, setup, num_labels: int, vocab_size: int) -> list[FieldSpec]:
        return [FieldSpec(TOKEN_LABELS, "token", "int32", 1), FieldSpec(TOKEN_LOGITS, "token", "float16", num_labels)]

    def prepared_columns(self) -> list[str]:
        return [TOKEN_LABELS]

    def host_fields(self, setup, input_ids, mask, example_ids, extra: dict):
        return input_ids, {TOKEN_LABELS: np.concatenate(extra[TOKEN_LABELS]).astype(np.int32)[:, None]}

    def device_fields(self, out, tokens, setup) -> dict[str, torch.Tensor]:
        return {TOKEN_LOGITS: tokens(out.logits).to(torch.float16)}

    # ---- stage two -------------------------------------------------------------------------------------------------
    def cache_columns(self) -> list[str]:
        return [TOKEN_LABELS, TOKEN_LOGITS]

    def collate(self, rows: list[dict], width: int, per_token) -> dict[str, torch.Tensor]:
        return {
            "labels": per_token(rows, TOKEN_LABELS, width, IGNORE, torch.long)[..., 0],
            "teacher_logits": per_token(rows, TOKEN_LOGITS, width, 0.0, torch.float32),
        }

    def loss(self, student, out, labels, teacher: dict, hidden_pairs, attention_mask, mix: LossMix, cfg, training: bool):
        """Hard CE on the labelled sub-words + T^2 KL per token (at every real token, or at the labelled ones with
        token_positions 'labeled'), averaged over those tokens, + the hidden loss."""
        where = attention_mask.bool() if cfg.token_positions == "all" else labels != IGNORE
        return distillation_loss(
            out.logits[where], labels[where], teacher["teacher_logits"][where], hidden_pairs, attention_mask, mix
        )

    # ---- evaluation ------------------------------------------------------------------------------------------------
    def dev_columns(self) -> list[str]:
        return [TOKEN_LABELS]

    def quality(self, model, rows: list[dict], tokens: list[np.ndarray], batch_size: int, pad_id: int, cache=None) -> dict:
        from pipeline.scoring import predict_tokens

        predictions = predict_tokens(model, tokens, batch_size, pad_id)
        labels = [r[TOKEN_LABELS][:, 0] for r in rows]
        id2label = {int(k): v for k, v in model.config.id2label.items()}
        metrics = entity_metrics(*tag_sequences(predictions, labels, id2label))
        return {"metric": "entity F1 (strict IOB2)", **metrics}


class TaggedDataset(torch.utils.data.Dataset):
    """Prepared rows (input_ids, token labels) for the teacher's Trainer."""

    def __init__(self, ds):
        self.ids, self.labels = ds["input_ids"], ds[TOKEN_LABELS]

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


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
    import hashlib

    from pipeline.data import split_fingerprint

    h = hashlib.sha256(split_fingerprint(ds).encode())
    table = ds.data.table if hasattr(ds.data, "table") else ds.data
    column = table.column(TOKEN_LABELS).combine_chunks()
    h.update(np.ascontiguousarray(column.flatten().to_numpy()).astype(np.int32).tobytes())
    return h.hexdigest()
