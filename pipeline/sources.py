"""Raw corpora: where a split comes from (a local file or a hub split), reading it through `datasets`, and the checks
on its columns, labels, texts and ids that name the file and row at fault."""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

# extension -> (datasets builder, builder kwargs). Delimited text is read as plain strings: no quoting (GLUE
# sentences contain bare quotes) and no NA guessing (a review that says "null" is text, not missing).
LOCAL_FORMATS = {
    ".tsv": ("csv", {"delimiter": "\t", "quoting": 3, "keep_default_na": False, "na_filter": False}),
    ".csv": ("csv", {"keep_default_na": False, "na_filter": False}),
    ".jsonl": ("json", {}),
    ".json": ("json", {}),
    ".parquet": ("parquet", {}),
}
TEXT_FORMATS = {".tsv", ".csv", ".jsonl", ".json"}


@dataclass
class Source:
    """Where a split comes from: a local file, or a hub dataset `NAME[:CONFIG]@SPLIT`."""

    spec: str
    path: Path | None = None
    hub_name: str | None = None
    hub_config: str | None = None
    hub_split: str | None = None

    @property
    def header_lines(self) -> int:
        return 1 if self.path is not None and self.path.suffix in (".tsv", ".csv") else 0

    def where(self, row: int) -> str:
        """Human location of 0-based data row `row`: the file line for delimited text, the row index otherwise."""
        if self.header_lines:
            return f"{self.spec}, line {row + 1 + self.header_lines}"
        return f"{self.spec}, row {row}"


def parse_source(spec: str, formats: tuple[str, ...] = tuple(LOCAL_FORMATS)) -> Source:
    """A split's source from its params value; `formats` are the file types the task reads."""
    path = Path(spec)
    if path.suffix.lower() in formats or path.exists() or "/" in spec and "@" not in spec:
        if not path.is_file():
            raise PipelineError(
                f"{spec}: data file not found; copy it there (README: 'Data') or set the params key to a "
                "hub id such as glue:sst2@train"
            )
        if path.suffix.lower() not in formats:
            raise PipelineError(f"{spec}: unsupported file type '{path.suffix}'; use one of {', '.join(formats)}")
        return Source(spec=spec, path=path)
    name, _, split = spec.partition("@")
    name, _, config = name.partition(":")
    if not split:
        raise PipelineError(
            f"'{spec}' is neither an existing file nor a hub id of the form NAME[:CONFIG]@SPLIT (e.g. glue:sst2@train)"
        )
    return Source(spec=spec, hub_name=name, hub_config=config or None, hub_split=split)


def _check_text_file(path: Path, header_lines: int) -> None:
    """Empty files, header-only files and non-UTF-8 bytes, caught before the parser turns them into obscure errors."""
    raw = path.read_bytes()
    if not raw.strip():
        raise PipelineError(f"{path}: file is empty; point the params key at a file with a header and rows")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise PipelineError(
            f"{path}, line {line}: bytes that are not UTF-8 ({raw[exc.start : exc.start + 4]!r}); "
            "re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None
    if sum(1 for line in raw.splitlines() if line.strip()) <= header_lines:
        raise PipelineError(f"{path}: no data rows; point the params key at a non-empty file")


def _root_cause(exc: BaseException) -> BaseException:
    """The error the parser raised, under the DatasetGenerationError that `datasets` wraps it in."""
    seen = {id(exc)}
    while (inner := exc.__cause__ or exc.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        exc = inner
    return exc


def _parse_failure(path: Path, exc: BaseException) -> str:
    """Where and why a file did not parse, as ', line N: reason'. JSON is re-read here to find the line (the
    parser's own message counts rows within a block); pandas names the line (or the 0-based row) of delimited text."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        lines = path.read_text(encoding="utf-8").splitlines()
        first = next((line for line in lines if line.strip()), "")
        if suffix == ".json" and not _parses(first):  # one JSON document, not JSON Lines
            try:
                json.loads("\n".join(lines))
            except json.JSONDecodeError as bad:
                return f", line {bad.lineno}: not valid JSON ({bad.msg}, column {bad.colno})"
        for number, line in enumerate(lines, 1):
            if line.strip() and not _parses(line):
                try:
                    json.loads(line)
                except json.JSONDecodeError as bad:
                    return f", line {number}: not valid JSON ({bad.msg}, column {bad.colno}); each line must be one JSON object"
    cause = _one_line(_root_cause(exc))
    line = re.search(r"\bline (\d+)", cause)
    row = re.search(r"\bstarting at row (\d+)", cause)  # pandas' tokenizer counts file rows from 0
    where = f", line {line.group(1)}" if line else f", line {int(row.group(1)) + 1}" if row else ""
    return f"{where}: could not parse as {suffix} ({cause})"


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def load_source(source: Source) -> datasets.Dataset:
    """Read one split with `datasets`."""
    if source.path is None:
        try:
            return datasets.load_dataset(source.hub_name, source.hub_config, split=source.hub_split)
        except Exception as exc:  # the hub raises many types; the user needs one line
            raise PipelineError(
                f"{source.spec}: could not load from the hub ({type(exc).__name__}: {exc}); check the id, "
                "your connection, or use a local file"
            ) from None
    suffix = source.path.suffix.lower()
    if suffix in TEXT_FORMATS:
        _check_text_file(source.path, source.header_lines)
    builder, kwargs = LOCAL_FORMATS[suffix]
    try:
        ds = datasets.load_dataset(builder, data_files=str(source.path), split="train", **kwargs)
    except Exception as exc:
        raise PipelineError(f"{source.spec}{_parse_failure(source.path, exc)}; fix the file") from None
    if len(ds) == 0:
        raise PipelineError(f"{source.spec}: no data rows; point the params key at a non-empty file")
    return ds


def _label_key(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def infer_label_names(raw_labels: list) -> list[str]:
    keys = sorted({k for k in map(_label_key, raw_labels) if k not in (None, "")})
    if all(k.lstrip("-").isdigit() for k in keys):
        keys.sort(key=int)
    return keys


def map_labels(raw_labels: list, label_names: list[str], source: Source, column: str) -> np.ndarray:
    """Raw labels -> ids 0..K-1. A raw label is a label name, or an integer index into `label_names`."""
    lookup = {name: i for i, name in enumerate(label_names)}
    indices_ok = not any(n.lstrip("-").isdigit() for n in label_names)
    out = np.empty(len(raw_labels), dtype=np.int64)
    for row, value in enumerate(raw_labels):
        key = _label_key(value)
        if key in lookup:
            out[row] = lookup[key]
        elif indices_ok and key is not None and key.isdigit() and int(key) < len(label_names):
            out[row] = int(key)
        else:
            raise PipelineError(
                f"{source.where(row)}: label {value!r} in column '{column}' is not one of {label_names}; "
                "fix the row or list the label in params 'data.label_names'"
            )
    return out


def _blank(text: str) -> bool:
    """Nothing a reader could see: whitespace and invisible format characters (zero-width spaces and joiners, BOMs)."""
    return not "".join(ch for ch in text if unicodedata.category(ch) != "Cf").strip()


def validate_texts(texts: list, source: Source, column: str) -> None:
    for row, text in enumerate(texts):
        if not isinstance(text, str) or _blank(text):
            raise PipelineError(f"{source.where(row)}: empty text in column '{column}'; remove the row or fill in its text")


def check_columns(ds: datasets.Dataset, source: Source, columns: dict[str, str]) -> None:
    for key, column in columns.items():
        if column not in ds.column_names:
            raise PipelineError(
                f"{source.spec}: no column '{column}' (have: {', '.join(ds.column_names)}); set params "
                f"'{key}' to the right column"
            )


def example_ids(ds: datasets.Dataset, source: Source, id_column: str | None) -> np.ndarray:
    """Integer ids per row: the id column's values (unique), or the row number when there is none."""
    if id_column is None:
        return np.arange(len(ds), dtype=np.int64)
    ids, first_seen = np.empty(len(ds), dtype=np.int64), {}
    for row, value in enumerate(ds[id_column]):
        key = _label_key(value)
        if key is None or not key.lstrip("-").isdigit():
            raise PipelineError(
                f"{source.where(row)}: id {value!r} in column '{id_column}' is not an integer; fix it or set "
                "data.id_column to null to number rows"
            )
        if int(key) in first_seen:
            raise PipelineError(
                f"{source.where(row)}: duplicate id {key} in column '{id_column}' (first at "
                f"{source.where(first_seen[int(key)]).split(', ')[-1]}); make ids unique or set data.id_column to null"
            )
        first_seen[int(key)] = row
        ids[row] = int(key)
    return ids
