"""Extractive question answering (SQuAD v1.1): question + context windows with a doc stride, answer start/end token
labels, the teacher's start and end logits per real token in the cache, span KD over context tokens, and the best
span across a question's windows scored with the official SQuAD v1.1 exact match and F1."""

from __future__ import annotations

import collections
import json
import logging
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import torch

from pipeline.cache import FieldSpec
from pipeline.data import TUNE
from pipeline.errors import PipelineError
from pipeline.losses import LossMix, hard_label_loss, hidden_state_loss, logit_loss
from pipeline.sources import Source, check_columns, load_source, parse_source
from pipeline.tasks.base import Task

log = logging.getLogger(__name__)

IGNORE = -100  # start/end label of a window without labels (transfer rows)
QA_POSITIONS = "qa_positions"  # example, int32 x 2: answer start and end token (0, 0 = [CLS]: not inside this window)
QA_WINDOW = "qa_window"  # example, int32 x 3: the window's question index, its first and last context token
OFFSETS = "offsets"  # token, int32 x 2: character span of a context token in its context; (0, 0) elsewhere
START_LOGITS, END_LOGITS = "start_logits", "end_logits"  # token, float16 x 1
QUESTIONS = "questions"  # the cache table of the dev questions: index, id, context, reference answers
MAX_ANSWER_TOKENS = 30  # the longest span post-processing considers (HF run_qa's max_answer_length)
LABEL_NAMES = ["start", "end"]  # the head's two outputs (BertForQuestionAnswering's num_labels)


@dataclass
class Question:
    id: str
    question: str
    context: str
    answers: list[str] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    where: str = ""
    article: str = ""  # what a tuning split is carved by: the article (title), else the context


# ---- reading ------------------------------------------------------------------------------------------------------
def read_squad_json(path: Path) -> list[Question]:
    """Questions of a file in the SQuAD v1.1 JSON schema (`{"data": [{"title", "paragraphs": [{"context", "qas":
    [{"id", "question", "answers": [{"answer_start", "text"}]}]}]}]}`)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise PipelineError(f"{path}: bytes that are not UTF-8; re-encode the file as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise PipelineError(f"{path}, line {exc.lineno}: not valid JSON ({exc.msg}); fix the file") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise PipelineError(f"{path}: not the SQuAD JSON schema (an object with a 'data' list of articles)")
    out = []
    for a, article in enumerate(doc["data"]):
        for p, paragraph in enumerate(article.get("paragraphs", [])):
            context = paragraph.get("context")
            for qa in paragraph.get("qas", []):
                qid = str(qa.get("id", f"article {a} paragraph {p}"))
                answers = qa.get("answers") or []
                out.append(
                    Question(
                        qid,
                        qa.get("question", ""),
                        context,
                        [x.get("text") for x in answers],
                        [x.get("answer_start") for x in answers],
                        f"{path}, question id {qid}",
                        f"{a}:{article.get('title', '')}",
                    )
                )
    if not out:
        raise PipelineError(f"{path}: no questions; point the params key at a SQuAD v1.1 JSON file")
    return out


def load_questions(source: Source) -> list[Question]:
    """From a SQuAD JSON file, or a jsonl/parquet file or hub split with the hub's `squad` columns (id, context,
    question, answers: {text: [...], answer_start: [...]})."""
    if source.path is not None and source.path.suffix.lower() == ".json":
        raw = source.path.read_bytes()
        if raw.lstrip().startswith(b"{") and b'"data"' in raw:
            return read_squad_json(source.path)
    ds = load_source(source)
    check_columns(ds, source, {"id": "id", "context": "context", "question": "question", "answers": "answers"})
    out = []
    titled = "title" in ds.column_names
    for i, row in enumerate(ds):
        answers = row["answers"] or {}
        out.append(
            Question(
                str(row["id"]),
                row["question"],
                row["context"],
                list(answers.get("text") or []),
                list(answers.get("answer_start") or []),
                f"{source.where(i)} (question id {row['id']})",
                row["title"] if titled else row["context"],
            )
        )
    return out


def check_question(q: Question, labeled: bool) -> None:
    """A non-empty context and question; with `labeled`, at least one answer, each found at its answer_start."""
    if not isinstance(q.context, str) or not q.context.strip():
        raise PipelineError(f"{q.where}: empty context; give the question its paragraph or drop it")
    if not isinstance(q.question, str) or not q.question.strip():
        raise PipelineError(f"{q.where}: empty question; fill it in or drop the entry")
    if not labeled:
        return
    if not q.answers:
        raise PipelineError(f"{q.where}: no answers; SQuAD v1.1 questions need at least one (text, answer_start)")
    for text, start in zip(q.answers, q.starts):
        if not isinstance(text, str) or not isinstance(start, int) or q.context[start : start + len(text)] != text:
            found = q.context.find(text) if isinstance(text, str) else -1
            hint = f" (the text occurs at {found})" if found >= 0 else " (the text does not occur in the context)"
            raise PipelineError(
                f"{q.where}: answer_start {start} does not index the answer '{text}' in its context{hint}; fix "
                "answer_start to the character offset of the answer"
            )


# ---- windows ------------------------------------------------------------------------------------------------------
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
                f"data.max_length {max_length}, not more than data.doc_stride {doc_stride}; shorten or drop the "
                "question, or raise data.max_length / lower data.doc_stride"
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
    import hashlib

    from pipeline.data import split_fingerprint

    h = hashlib.sha256(split_fingerprint(ds).encode())
    table = ds.data.table if hasattr(ds.data, "table") else ds.data
    for name in (QA_POSITIONS, QA_WINDOW, OFFSETS):
        h.update(np.ascontiguousarray(table.column(name).combine_chunks().flatten().to_numpy()).astype(np.int32).tobytes())
    for name in ("question_id", "context", "answers"):
        if name in table.column_names:
            h.update(json.dumps(table.column(name).to_pylist()).encode())
    return h.hexdigest()


# ---- scoring (the official SQuAD v1.1 evaluation) -----------------------------------------------------------------
def normalize_answer(s: str) -> str:
    """Lower case, drop punctuation and the articles a/an/the, collapse whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def f1_score(prediction: str, truth: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = collections.Counter(pred) & collections.Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions: dict[str, str], references: dict[str, list[str]]) -> dict:
    """Exact match and F1 (in [0, 1]), each the best over a question's reference answers, averaged over questions."""
    em = f1 = 0.0
    for qid, truths in references.items():
        pred = predictions.get(qid, "")
        em += max(float(normalize_answer(pred) == normalize_answer(t)) for t in truths)
        f1 += max(f1_score(pred, t) for t in truths)
    n = max(len(references), 1)
    return {"exact_match": em / n, "f1": f1 / n}


def best_span(start: np.ndarray, end: np.ndarray, first: int, last: int, max_tokens: int = MAX_ANSWER_TOKENS):
    """(score, start, end) of the highest start + end logit over spans inside [first, last] with start <= end <
    start + max_tokens: every valid span is considered (n-best with n = all)."""
    s, e = start[first : last + 1].astype(np.float64), end[first : last + 1].astype(np.float64)
    n = len(s)
    scores = s[:, None] + e[None, :]
    i, j = np.indices((n, n))
    scores[(j < i) | (j >= i + max_tokens)] = -np.inf
    flat = int(np.argmax(scores))
    return float(scores.flat[flat]), first + flat // n, first + flat % n


def predict_answers(windows: list[dict], start_logits: list[np.ndarray], end_logits: list[np.ndarray]) -> dict[str, str]:
    """Per question id, the context substring of the best span over all of its windows. `windows[k]` has the window's
    question id, context, first/last context token and offsets (tokens x 2)."""
    best: dict[str, tuple[float, str]] = {}
    for w, s, e in zip(windows, start_logits, end_logits):
        score, a, b = best_span(s, e, w["first"], w["last"])
        text = w["context"][w["offsets"][a][0] : w["offsets"][b][1]]
        if w["id"] not in best or score > best[w["id"]][0]:
            best[w["id"]] = (score, text)
    return {qid: text for qid, (_, text) in best.items()}


# ---- the task -----------------------------------------------------------------------------------------------------
def token_type_ids(first_context: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """BERT segment ids of question-first windows: 1 from the first context token on (the last [SEP] included)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)[None, :]
    return ((positions >= first_context[:, None]) & attention_mask.bool()).long()


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


def context_mask(window: torch.Tensor, width: int) -> torch.Tensor:
    """(batch, width) True at each window's context tokens (window = question index, first, last)."""
    positions = torch.arange(width)[None, :]
    return (positions >= window[:, 1:2]) & (positions <= window[:, 2:3])


def span_distillation_loss(out, labels, teacher: dict, hidden_pairs, attention_mask, mix: LossMix) -> tuple:
    """alpha * CE of the gold start and end tokens over a window's real tokens + beta * the logit loss (T^2 KL by
    default) of one distribution over the window's context tokens, for start and for end, + gamma * hidden; start
    and end are averaged (they are stacked as rows). Windows with IGNORE labels (transfer rows) skip the CE."""
    lowest = torch.finfo(torch.float32).min
    student = torch.cat([out.start_logits, out.end_logits]).float()
    real = attention_mask.bool().repeat(2, 1)
    context = teacher["context_mask"].repeat(2, 1)
    parts = {}
    total = student.new_zeros(())
    if mix.alpha:
        parts["ce"] = hard_label_loss(student.masked_fill(~real, lowest), torch.cat([labels[:, 0], labels[:, 1]]))
        total = total + mix.alpha * parts["ce"]
    if mix.beta:
        t = teacher["teacher_logits"]
        soft = logit_loss(
            mix.logit_kind,
            student.masked_fill(~context, lowest if mix.logit_kind != "mse" else 0.0),
            torch.cat([t[..., 0], t[..., 1]]).masked_fill(~context, lowest if mix.logit_kind != "mse" else 0.0),
            mix.temperature,
        )
        parts["kl" if mix.logit_kind == "kl" else mix.logit_kind] = soft
        total = total + mix.beta * soft
    if mix.gamma and hidden_pairs:
        parts["hidden"] = hidden_state_loss(hidden_pairs, attention_mask, mix.hidden_kind)
        total = total + mix.gamma * parts["hidden"]
    return total, parts


class QuestionAnswering(Task):
    name = "question_answering"
    architecture = "BertForQuestionAnswering"
    pipeline_tag = "question-answering"
    headline = "f1"
    logit_field = START_LOGITS
    label_keys = ["start_positions", "end_positions"]

    def auto_class(self):
        from transformers import AutoModelForQuestionAnswering

        return AutoModelForQuestionAnswering

    def student_class(self):
        from transformers import BertForQuestionAnswering

        return BertForQuestionAnswering

    # ---- data ------------------------------------------------------------------------------------------------------
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
                    check_question(q, labeled=name != "transfer")
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
            windows, outside = window_questions(chosen[name], tokenizer, data.max_length, data.doc_stride, labeled)
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
        info = {"label_names": LABEL_NAMES, "max_length": data.max_length, "doc_stride": data.doc_stride, "splits": stats}
        return splits, {**info, "task": self.name}

    def tuning_split(self, splits: dict, info: dict, data, seed: int):
        return splits, info  # carved by article (or read from data.val) in prepare

    # ---- teacher ---------------------------------------------------------------------------------------------------
    def teacher_trainer_kwargs(self, tokenizer, splits: dict, cfg, seed: int, label_names: list[str]) -> dict:
        from transformers import DataCollatorWithPadding

        dev = splits["dev"]
        windows = dev_windows(dev)
        references = question_references(dev)

        def compute(eval_pred) -> dict:
            start, end = eval_pred.predictions[:2]
            lengths = [w["length"] for w in windows]
            answers = predict_answers(windows, [s[:n] for s, n in zip(start, lengths)], [e[:n] for e, n in zip(end, lengths)])
            scores = squad_metrics(answers, references)
            return {"accuracy": scores["exact_match"], **scores}

        return {
            "train_dataset": WindowDataset(splits["train"]),
            "eval_dataset": WindowDataset(dev),
            "data_collator": DataCollatorWithPadding(tokenizer),
            "compute_metrics": compute,
        }

    def trainer_metrics(self, label_names: list[str]) -> dict:
        return {}  # students: dev loss per epoch; the evaluate stage scores spans

    # ---- extraction ------------------------------------------------------------------------------------------------
    def manifest_meta(self, setup, cfg) -> dict:
        return {"task": self.name, "max_answer_tokens": MAX_ANSWER_TOKENS}

    def fields(self, setup, num_labels: int, vocab_size: int) -> list[FieldSpec]:
        return [
            FieldSpec(QA_POSITIONS, "example", "int32", 2),
            FieldSpec(QA_WINDOW, "example", "int32", 3),
            FieldSpec(OFFSETS, "token", "int32", 2),
            FieldSpec(START_LOGITS, "token", "float16", 1),
            FieldSpec(END_LOGITS, "token", "float16", 1),
        ]

    def prepared_columns(self) -> list[str]:
        return [QA_POSITIONS, QA_WINDOW, OFFSETS]

    def host_fields(self, setup, input_ids, mask, example_ids, extra: dict):
        return input_ids, {
            QA_POSITIONS: np.stack(extra[QA_POSITIONS]).astype(np.int32),
            QA_WINDOW: np.stack(extra[QA_WINDOW]).astype(np.int32),
            OFFSETS: np.concatenate(extra[OFFSETS]).astype(np.int32).reshape(-1, 2),
        }

    def model_inputs(self, setup, input_ids: np.ndarray, mask: np.ndarray, extra: dict) -> dict[str, np.ndarray]:
        first = np.asarray([w[1] for w in extra[QA_WINDOW]])
        return {"token_type_ids": ((np.arange(mask.shape[1])[None, :] >= first[:, None]) & mask).astype(np.int64)}

    def device_fields(self, out, tokens, setup) -> dict[str, torch.Tensor]:
        return {
            START_LOGITS: tokens(out.start_logits[..., None]).to(torch.float16),
            END_LOGITS: tokens(out.end_logits[..., None]).to(torch.float16),
        }

    def cache_tables(self, splits: dict) -> dict[str, pa.Table]:
        """The dev (and tuning) questions: index, id, context, reference answers, for scoring from the cache alone."""
        seen, rows = set(), []
        for name in ("dev", TUNE):
            if name not in splits:
                continue
            ds = splits[name]
            for window, qid, context, answers in zip(ds[QA_WINDOW], ds["question_id"], ds["context"], ds["answers"]):
                if window[0] not in seen:
                    seen.add(window[0])
                    rows.append((int(window[0]), qid, context, list(answers)))
        return {
            QUESTIONS: pa.table(
                {
                    "question": pa.array([r[0] for r in rows], pa.int32()),
                    "id": [r[1] for r in rows],
                    "context": [r[2] for r in rows],
                    "answers": pa.array([r[3] for r in rows], pa.list_(pa.string())),
                }
            )
        }

    # ---- stage two -------------------------------------------------------------------------------------------------
    def cache_columns(self) -> list[str]:
        return [QA_POSITIONS, QA_WINDOW, START_LOGITS, END_LOGITS]

    def collate(self, rows: list[dict], width: int, per_token) -> dict[str, torch.Tensor]:
        window = torch.from_numpy(np.stack([r[QA_WINDOW] for r in rows]).astype(np.int64))
        mask = torch.arange(width)[None, :] < torch.tensor([r["length"] for r in rows])[:, None]
        return {
            "labels": torch.from_numpy(np.stack([r[QA_POSITIONS] for r in rows]).astype(np.int64)),
            "token_type_ids": token_type_ids(window[:, 1], mask),
            "context_mask": context_mask(window, width),
            "teacher_logits": torch.cat(
                [
                    per_token(rows, START_LOGITS, width, 0.0, torch.float32),
                    per_token(rows, END_LOGITS, width, 0.0, torch.float32),
                ],
                -1,
            ),
        }

    def loss(self, student, out, labels, teacher: dict, hidden_pairs, attention_mask, mix: LossMix, cfg, training: bool):
        return span_distillation_loss(out, labels, teacher, hidden_pairs, attention_mask, mix)

    def returns_logits(self, training: bool) -> bool:
        return False  # start/end logits; the evaluate stage scores spans, the Trainer reports dev loss

    # ---- evaluation ------------------------------------------------------------------------------------------------
    def dev_columns(self) -> list[str]:
        return [QA_WINDOW, OFFSETS]

    def quality(self, model, rows, tokens, batch_size: int, pad_id: int, cache=None) -> dict:
        if cache is None:
            raise PipelineError("question answering is scored against the cache's questions table; pass the cache")
        table = cache.table(QUESTIONS).to_pydict()
        by_index = {q: (qid, c, a) for q, qid, c, a in zip(table["question"], table["id"], table["context"], table["answers"])}
        starts, ends = span_logits(model, tokens, [int(r[QA_WINDOW][1]) for r in rows], batch_size, pad_id)
        windows = []
        for r in rows:
            qid, context, _ = by_index[int(r[QA_WINDOW][0])]
            windows.append(
                {
                    "id": qid,
                    "context": context,
                    "first": int(r[QA_WINDOW][1]),
                    "last": int(r[QA_WINDOW][2]),
                    "offsets": r[OFFSETS],
                }
            )
        asked = {int(r[QA_WINDOW][0]) for r in rows}  # one split's questions (the table holds dev's and val's)
        references = {by_index[q][0]: list(by_index[q][2]) for q in sorted(asked)}
        scores = squad_metrics(predict_answers(windows, starts, ends), references)
        return {"metric": "SQuAD v1.1 F1", "accuracy": scores["exact_match"], **scores, "questions": len(references)}


@torch.no_grad()
def span_logits(model, token_lists: list[np.ndarray], firsts: list[int], batch_size: int, pad_id: int):
    """Start and end logits of each window (its real tokens), batched in length order."""
    from pipeline.scoring import length_ordered_outputs

    starts: list[np.ndarray] = [np.zeros(0)] * len(token_lists)
    ends: list[np.ndarray] = [np.zeros(0)] * len(token_lists)

    def segments(rows, mask):
        return {"token_type_ids": token_type_ids(torch.tensor([firsts[r] for r in rows]), mask)}

    for rows, out in length_ordered_outputs(model, token_lists, batch_size, pad_id, segments):
        s, e = out.start_logits.float().numpy(), out.end_logits.float().numpy()
        for j, r in enumerate(rows):
            starts[r], ends[r] = s[j, : len(token_lists[r])], e[j, : len(token_lists[r])]
    return starts, ends


class QuestionAnswerer:
    """Answers a question from a context with a saved QA model (teacher or student): what
    `pipeline("question-answering")` did before transformers 5 removed that pipeline. The context is split into the
    same windows as in training and the best span over all of them is returned, as evaluation scores it.

    >>> qa = QuestionAnswerer("artifacts/students/l3")
    >>> qa("Who won?", "The Denver Broncos won the game.")
    {'answer': 'The Denver Broncos', 'start': 0, 'end': 18, 'score': 11.2}
    """

    def __init__(self, model_dir: str | Path, max_length: int = 384, doc_stride: int = 128, batch_size: int = 16):
        from transformers import AutoModelForQuestionAnswering, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForQuestionAnswering.from_pretrained(model_dir).eval()
        self.max_length = min(max_length, self.model.config.max_position_embeddings)
        self.doc_stride, self.batch_size = doc_stride, batch_size

    def __call__(self, question: str, context: str) -> dict:
        q = Question("question", question, context, where="the question")
        check_question(q, labeled=False)
        rows, _ = window_questions([q], self.tokenizer, self.max_length, self.doc_stride, labeled=False)
        pad = self.tokenizer.pad_token_id or 0
        starts, ends = span_logits(self.model, [np.asarray(r[0]) for r in rows], [r[2] for r in rows], self.batch_size, pad)
        score, a, b, offsets = max(
            (best_span(s, e, r[2], r[3]) + (r[4],) for r, s, e in zip(rows, starts, ends)), key=lambda x: x[0]
        )
        start, end = offsets[a][0], offsets[b][1]
        return {"answer": context[start:end], "start": start, "end": end, "score": round(score, 4)}


def dev_windows(ds: datasets.Dataset) -> list[dict]:
    """A prepared dev split's windows as predict_answers wants them."""
    return [
        {"id": qid, "context": c, "first": int(w[1]), "last": int(w[2]), "offsets": np.asarray(o).reshape(-1, 2), "length": n}
        for qid, c, w, o, n in zip(ds["question_id"], ds["context"], ds[QA_WINDOW], ds[OFFSETS], ds["length"])
    ]


def question_references(ds: datasets.Dataset) -> dict[str, list[str]]:
    return {qid: list(a) for qid, a in zip(ds["question_id"], ds["answers"])}


class WindowDataset(torch.utils.data.Dataset):
    """Prepared windows (input_ids, segment ids, start/end labels) for the teacher's Trainer."""

    def __init__(self, ds):
        self.ids, self.window, self.positions = ds["input_ids"], ds[QA_WINDOW], ds[QA_POSITIONS]

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        ids, first = self.ids[i], self.window[i][1]
        return {
            "input_ids": ids,
            "token_type_ids": [int(k >= first) for k in range(len(ids))],
            "start_positions": self.positions[i][0],
            "end_positions": self.positions[i][1],
        }
