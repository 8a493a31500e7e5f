"""Question answering's data: questions split into question-first windows with answer labels, the tuning split carved
by whole article, transfer questions, and the split fingerprint that covers every QA column."""

from __future__ import annotations

import collections
import hashlib
import json
import logging

import datasets
import numpy as np

from pipeline.data import TUNE, split_fingerprint
from pipeline.errors import PipelineError
from pipeline.sources import parse_source
from pipeline.tasks import QUESTION_ANSWERING
from pipeline.tasks.question_answering import (
    IGNORE,
    LABEL_NAMES,
    OFFSETS,
    QA_POSITIONS,
    QA_WINDOW,
    QuestionAnsweringConfig,
)
from pipeline.tasks.question_answering.squad import Question, check_question, load_questions
from pipeline.tasks.sequence_classification.data import SequenceClassificationData

log = logging.getLogger(__name__)


def window_questions(questions: list[Question], tokenizer, max_length: int, doc_stride: int, labeled: bool):
    """Question-first windows over each context (HF run_qa.py): (per window: input_ids, question index, first and
    last context token, character offsets, start/end labels) and the number of answers inside no window.

    A window's labels are the first answer's first and last tokens when the answer lies inside the window, else
    [CLS] (0, 0); without `labeled` they are IGNORE."""
    q_tokens = tokenizer([q.question.lstrip() for q in questions], add_special_tokens=False)["input_ids"]
    room = [max_length - len(t) - 3 for t in q_tokens]  # [CLS] question [SEP] context [SEP]
    for q, r, t in zip(questions, room, q_tokens):
        if r <= doc_stride:
            raise PipelineError(
                f"{q.where}: the question is {len(t)} tokens, which leaves {max(r, 0)} context tokens per window with "
                f"data.max_length {max_length}, not more than question_answering.doc_stride {doc_stride}; shorten or drop the "
                "question, or raise data.max_length / lower question_answering.doc_stride"
            )
    enc = tokenizer(
        [q.question.lstrip() for q in questions],
        [q.context for q in questions],
        truncation="only_second",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    rows = []
    found = np.zeros(len(questions), dtype=bool)
    for j, ids in enumerate(enc["input_ids"]):
        qi = enc["overflow_to_sample_mapping"][j]
        seq = enc.sequence_ids(j)
        first = seq.index(1)
        last = len(seq) - 1 - seq[::-1].index(1)
        offsets = [(a, b) if first <= k <= last else (0, 0) for k, (a, b) in enumerate(enc["offset_mapping"][j])]
        positions = (IGNORE, IGNORE)
        if labeled:
            q = questions[qi]
            start_char = q.starts[0]
            end_char = start_char + len(q.answers[0])
            positions = (0, 0)
            if offsets[first][0] <= start_char and offsets[last][1] >= end_char:
                s = first
                while s <= last and offsets[s][0] <= start_char:
                    s += 1
                e = last
                while e >= first and offsets[e][1] >= end_char:
                    e -= 1
                positions = (s - 1, e + 1)
                found[qi] = True
        rows.append((ids, qi, first, last, offsets, positions))
    return rows, int(labeled) * int((~found).sum())


def qa_split(rows: list, questions: list[Question] | None, first: int = 0) -> datasets.Dataset:
    """Prepared windows; dev and tuning windows also carry their question's id, context and reference answers (for
    scoring). A window's question index in `qa_window` is `first` + its index in the split's questions."""
    data = {
        "example_id": np.arange(len(rows), dtype=np.int64),
        "input_ids": [np.asarray(r[0], dtype=np.int32) for r in rows],
        "length": np.array([len(r[0]) for r in rows], dtype=np.int32),
        "label": np.full(len(rows), -1, dtype=np.int64),
        QA_POSITIONS: [np.asarray(r[5], dtype=np.int32) for r in rows],
        QA_WINDOW: [np.asarray((first + r[1], r[2], r[3]), dtype=np.int32) for r in rows],
        OFFSETS: [np.asarray(r[4], dtype=np.int32).reshape(-1) for r in rows],
    }
    ints = datasets.List(datasets.Value("int32"))
    features = {
        "example_id": datasets.Value("int64"),
        "input_ids": ints,
        "length": datasets.Value("int32"),
        "label": datasets.Value("int64"),
        QA_POSITIONS: ints,
        QA_WINDOW: ints,
        OFFSETS: ints,
    }
    if questions is not None:
        data["question_id"] = [questions[r[1]].id for r in rows]
        data["context"] = [questions[r[1]].context for r in rows]
        data["answers"] = [list(questions[r[1]].answers) for r in rows]
        features.update(
            {
                "question_id": datasets.Value("string"),
                "context": datasets.Value("string"),
                "answers": datasets.List(datasets.Value("string")),
            }
        )
    return datasets.Dataset.from_dict(data, features=datasets.Features(features))


def qa_fingerprint(ds: datasets.Dataset) -> str:
    """The sequence classifier's fingerprint (ids, token ids) plus every QA column, texts included."""
    h = hashlib.sha256(split_fingerprint(ds).encode())
    table = ds.data.table if hasattr(ds.data, "table") else ds.data
    for name in (QA_POSITIONS, QA_WINDOW, OFFSETS):
        h.update(np.ascontiguousarray(table.column(name).combine_chunks().flatten().to_numpy()).astype(np.int32).tobytes())
    for name in ("question_id", "context", "answers"):
        if name in table.column_names:
            h.update(json.dumps(table.column(name).to_pylist()).encode())
    return h.hexdigest()


def _subset(questions: list[Question], rows: np.ndarray, limit: int | None, seed: int) -> list[Question]:
    """The questions at `rows`, or a seeded subset of `limit` of them (in file order)."""
    if limit is not None and limit < len(rows):
        rows = np.sort(np.random.default_rng(seed).permutation(rows)[:limit])
    return [questions[i] for i in rows]


def carve_articles(questions: list[Question], dev_contexts: set[str], n: int, seed: int, spec: str):
    """A tuning split of `n` questions drawn from whole articles of a train file: articles (in a seeded order, none with
    a dev context) are taken until they hold `n` questions, and every question of a taken article leaves the train
    pool, so no context of the tuning split is trained on. Returns (tuning questions, the train pool's indices, the
    taken articles' contexts (to keep out of the transfer questions), stats)."""
    by_article: dict[str, list[int]] = collections.defaultdict(list)
    for i, q in enumerate(questions):
        by_article[q.article].append(i)
    eligible = [a for a, rows in by_article.items() if not any(questions[i].context in dev_contexts for i in rows)]
    order = [eligible[i] for i in np.random.default_rng(seed).permutation(len(eligible))]
    taken, count = [], 0
    for article in order:
        if count >= n:
            break
        taken.append(article)
        count += len(by_article[article])
    if count < n or len(taken) == len(by_article):
        raise PipelineError(
            f"params.yaml: data.val_examples={n} needs whole articles of {spec} holding {n} questions with some left "
            f"for train, but its {len(by_article)} articles ({len(eligible)} with no dev context) hold "
            f"{sum(len(by_article[a]) for a in eligible)} questions; lower data.val_examples or point data.val at a "
            "labelled SQuAD file"
        )
    in_tuning = np.zeros(len(questions), dtype=bool)
    for article in taken:
        in_tuning[by_article[article]] = True
    tuning = _subset(questions, np.flatnonzero(in_tuning), n, seed)
    stats = {
        "source": f"{spec} ({n} questions of {len(taken)} whole articles, carved before train)",
        "articles": len(taken),
        "tuning_article_questions_removed": int(in_tuning.sum()),
    }
    contexts = {questions[i].context for i in np.flatnonzero(in_tuning)}
    return tuning, np.flatnonzero(~in_tuning), contexts, stats


class QuestionAnsweringData(SequenceClassificationData):
    name = QUESTION_ANSWERING
    config_class = QuestionAnsweringConfig

    def split_fingerprint(self, ds) -> str:
        return qa_fingerprint(ds)

    def prepare(self, data, tokenizer, seed: int):
        if not getattr(tokenizer, "is_fast", False):
            raise PipelineError("question answering needs a fast tokenizer (offset mappings for answer spans)")
        formats = (".json", ".jsonl", ".parquet")
        specs = {"train": data.train, "dev": data.dev, TUNE: data.val, "transfer": data.transfer}
        loaded = {}
        for name, spec in specs.items():
            if spec is not None:
                loaded[name] = load_questions(parse_source(spec, formats))
                for q in loaded[name]:
                    check_question(q, labeled=name != "transfer", max_context_chars=self.config.max_context_chars)
        chosen = {"dev": _subset(loaded["dev"], np.arange(len(loaded["dev"])), data.max_dev_examples, seed)}
        dev_contexts = {q.context for q in chosen["dev"]}
        pool, carved, extra = np.arange(len(loaded["train"])), set(), {}
        if data.val is None and data.val_examples:  # whole articles of the train file, before max_train_examples
            chosen[TUNE], pool, carved, extra = carve_articles(
                loaded["train"], dev_contexts, data.val_examples, seed + 2, data.train
            )
        chosen["train"] = _subset(loaded["train"], pool, data.max_train_examples, seed)
        if data.val is not None:  # a labelled file of its own: questions on a context of train or dev leave it
            taken = dev_contexts | {q.context for q in chosen["train"]}
            keep = np.array([i for i, q in enumerate(loaded[TUNE]) if q.context not in taken], dtype=np.int64)
            extra = {"overlap_removed": len(loaded[TUNE]) - len(keep)}
            if extra["overlap_removed"]:
                log.warning(
                    "%s: %d tuning questions on a train or dev context were dropped", data.val, len(loaded[TUNE]) - len(keep)
                )
            if not len(keep):
                raise PipelineError(
                    f"{data.val}: every data.val question is on a train or dev context; point data.val at other articles"
                )
            chosen[TUNE] = _subset(loaded[TUNE], keep, data.val_examples or None, seed + 2)
        if "transfer" in loaded:  # unlabeled questions (answers ignored) on no context or question of the other splits
            held = {(q.question, q.context) for name in ("train", "dev") for q in chosen[name]}
            tuning = {q.context for q in chosen.get(TUNE, [])} | carved
            rows = np.array(
                [i for i, q in enumerate(loaded["transfer"]) if (q.question, q.context) not in held and q.context not in tuning],
                dtype=np.int64,
            )
            if not len(rows):
                raise PipelineError(f"{data.transfer}: no transfer questions left after removing those in train, dev or val")
            chosen["transfer"] = _subset(loaded["transfer"], rows, data.max_transfer_examples, seed + 1)
        splits, stats = {}, {}
        for name in ("train", "dev", TUNE, "transfer"):
            if name not in chosen:
                continue
            labeled = name != "transfer"
            windows, outside = window_questions(chosen[name], tokenizer, data.max_length, self.config.doc_stride, labeled)
            if outside:
                log.warning(
                    "%s: %d of %d answers lie inside no window (longer than the windows' overlap, or cut by "
                    "max_length); their windows are labelled [CLS]",
                    specs[name],
                    outside,
                    len(chosen[name]),
                )
            # the tuning questions are numbered after dev's: one cache table holds both splits' questions
            first = len(chosen["dev"]) if name == TUNE else 0
            splits[name] = qa_split(windows, chosen[name] if name in ("dev", TUNE) else None, first)
            stats[name] = {
                "source": specs[name] if name in loaded else data.train,
                "rows_in_source": len(loaded[name if name in loaded else "train"]),
                "questions": len(chosen[name]),
                "rows": len(windows),
                "truncated": 0,  # long contexts are split into windows, never cut
                "extra_windows": len(windows) - len(chosen[name]),  # windows beyond a question's first
                "answers_outside_windows": outside,
                "tokens": int(sum(len(w[0]) for w in windows)),
                "fingerprint": qa_fingerprint(splits[name]),
            }
            if name == TUNE:
                stats[name].update(extra)
        info = {"label_names": LABEL_NAMES, "max_length": data.max_length, "doc_stride": self.config.doc_stride, "splits": stats}
        return splits, {**info, "task": self.name}

    def tuning_split(self, splits: dict, info: dict, data, seed: int):
        return splits, info  # carved by article (or read from data.val) in prepare
