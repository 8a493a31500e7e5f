"""Reading word/tag sentences: CoNLL files, or json/jsonl/parquet files and hub splits with word and tag lists;
checking their tags are strict IOB2."""

from __future__ import annotations

import re
from pathlib import Path

import datasets

from pipeline.errors import PipelineError
from pipeline.sources import Source, check_columns, load_source

CONLL_SUFFIXES = (".txt", ".conll", ".iob", ".iob2")


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
    ds = load_source(source)
    check_columns(ds, source, {"data.text_column": data.text_column, "data.label_column": data.label_column})
    feature = ds.features[data.label_column]
    inner = getattr(feature, "feature", None)
    names = inner.names if isinstance(inner, datasets.ClassLabel) else None
    for column, key in ((data.text_column, "data.text_column"), (data.label_column, "data.label_column")):
        kind = ds.features[column]
        if not isinstance(kind, (datasets.List, datasets.LargeList, datasets.Sequence, list)):
            raise PipelineError(
                f"{source.spec}: column '{column}' ({key}) holds single values ({kind}), not a list per sentence; "
                "token_classification reads CoNLL files or rows of word and tag lists: point the data keys at such a "
                "file, or set `task` to sequence_classification for labelled sentences"
            )
    words = [list(map(str, w)) for w in ds[data.text_column]]
    tags = [[names[t] for t in row] if names else [str(t) for t in row] for row in ds[data.label_column]]
    return words, tags, [source.where(i) for i in range(len(words))]


def infer_tag_names(tags: list[list[str]]) -> list[str]:
    """O first, then per entity type (sorted) B- before I-."""
    types = sorted({t[2:] for row in tags for t in row if t != "O"})
    return ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")]


def _word_at(where: str, i: int, word: str) -> str:
    """Where word i of a sentence is: its own line in a CoNLL file (a sentence's words are consecutive lines from the
    line `where` names), else the sentence's row and the word's place in it."""
    found = re.search(r", line (\d+)$", where)
    if found:
        return f"{where[: found.start()]}, line {int(found.group(1)) + i} (word {i + 1} '{word}')"
    return f"{where} (word {i + 1} '{word}')"


def check_iob2(words: list[str], tags: list[str], where: str, tag_names: list[str]) -> None:
    """Every tag known; an I-X only after B-X or I-X (strict IOB2)."""
    known = set(tag_names)
    previous = "O"
    for i, tag in enumerate(tags):
        if tag not in known:
            raise PipelineError(
                f"{_word_at(where, i, words[i])}: tag '{tag}' is not one of {tag_names}; fix the tag or list it "
                "in data.label_names"
            )
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            raise PipelineError(
                f"{_word_at(where, i, words[i])}: '{tag}' follows '{previous}', which is not valid IOB2 (an entity "
                f"starts with B-{tag[2:]}); fix the tag, or convert IOB1 files to IOB2"
            )
        previous = tag
