"""Reading questions: SQuAD v1.1 JSON files, or jsonl / parquet files and hub splits with the hub's `squad` columns;
checking each question names a context and, when labelled, answers found where they say."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.sources import Source, load_source


@dataclass
class Question:
    id: str
    question: str
    context: str
    answers: list[str] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    where: str = ""
    article: str = ""  # what a tuning split is carved by: the article (title), else the context


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
            for q, qa in enumerate(paragraph.get("qas", [])):
                # an id-less question gets its place in the file: unique and stable, as scoring joins on ids
                qid = str(qa["id"]) if qa.get("id") not in (None, "") else f"article {a} paragraph {p} question {q}"
                answers = qa.get("answers") or []
                out.append(
                    Question(
                        qid,
                        qa.get("question", ""),
                        context,
                        [x.get("text") for x in answers],
                        [x.get("answer_start") for x in answers],
                        f"{path}, article {a} paragraph {p}, question id {qid}",
                        f"{a}:{article.get('title', '')}",
                    )
                )
    if not out:
        raise PipelineError(f"{path}: no questions; point the params key at a SQuAD v1.1 JSON file")
    return _unique_ids(out)


def _unique_ids(questions: list[Question]) -> list[Question]:
    """Refuse a repeated question id, naming both places: predictions are joined to references by id."""
    first: dict[str, Question] = {}
    for q in questions:
        if q.id in first:
            raise PipelineError(
                f"{q.where}: question id {q.id!r} is used twice (first at {first[q.id].where}); give every question its own id"
            )
        first[q.id] = q
    return questions


def load_questions(source: Source) -> list[Question]:
    """From a SQuAD JSON file, or a jsonl/parquet file or hub split with the hub's `squad` columns (id, context,
    question, answers: {text: [...], answer_start: [...]})."""
    if source.path is not None and source.path.suffix.lower() == ".json":
        raw = source.path.read_bytes()
        if raw.lstrip().startswith(b"{") and b'"data"' in raw:
            return read_squad_json(source.path)
    ds = load_source(source)
    missing = [c for c in ("id", "context", "question", "answers") if c not in ds.column_names]
    if missing:
        raise PipelineError(
            f"{source.spec}: neither SQuAD v1.1 JSON (an object with a 'data' list of articles) nor rows with the hub's "
            f"squad columns (missing: {', '.join(missing)}; have: {', '.join(ds.column_names)}); point the data key "
            "at a SQuAD-format file"
        )
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
    return _unique_ids(out)


def check_question(q: Question, labeled: bool, max_context_chars: int | None = None) -> None:
    """A non-empty context of at most `max_context_chars` and a question; with `labeled`, at least one answer, each a
    non-empty text found at its integer answer_start."""
    if not isinstance(q.context, str) or not q.context.strip():
        raise PipelineError(f"{q.where}: empty context; give the question its paragraph or drop it")
    if max_context_chars is not None and len(q.context) > max_context_chars:
        raise PipelineError(
            f"{q.where}: the context is {len(q.context):,} characters, over question_answering.max_context_chars "
            f"({max_context_chars:,}); split it into paragraphs, drop the question, or raise question_answering.max_context_chars"
        )
    if not isinstance(q.question, str) or not q.question.strip():
        raise PipelineError(f"{q.where}: empty question; fill it in or drop the entry")
    if not labeled:
        return
    if not q.answers:
        raise PipelineError(f"{q.where}: no answers; SQuAD v1.1 questions need at least one (text, answer_start)")
    for text, start in zip(q.answers, q.starts):
        if not isinstance(text, str) or not text.strip():
            raise PipelineError(f"{q.where}: an answer text is empty; give the answer's text or drop the answer")
        if isinstance(start, bool) or not isinstance(start, int):
            raise PipelineError(
                f"{q.where}: answer_start {start!r} must be an integer (the character offset of the answer), not "
                f"{type(start).__name__}; write it without quotes"
            )
        if q.context[start : start + len(text)] != text:
            found = q.context.find(text) if isinstance(text, str) else -1
            hint = f" (the text occurs at {found})" if found >= 0 else " (the text does not occur in the context)"
            raise PipelineError(
                f"{q.where}: answer_start {start} does not index the answer '{text}' in its context{hint}; fix "
                "answer_start to the character offset of the answer"
            )
