"""Reading questions: SQuAD v1.1 JSON files, or jsonl / parquet files and hub splits with the hub's `squad` columns;
checking each question names a context and, when labelled, answers found where they say."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.sources import Source, check_columns, load_source


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
