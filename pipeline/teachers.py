"""Several teachers for one student. Each extra teacher has its own cache (logits only: the main teacher's cache gives
the hidden states), opened through its own manifest and checked against the main cache (same prepared rows, tokenizer,
length and labels) and against the params that made it; its logits are joined to the main cache's rows by example id,
and the student's soft target is the weighted average of the teachers' probabilities (`losses.combine_teachers`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.cache import CacheSplit, TeacherCache
from pipeline.cache.rows import Rows
from pipeline.cache.schema import MANIFEST
from pipeline.errors import PipelineError

EXTRA_LOGITS = "extra_logits"  # the row key (and, prefixed by teacher_, the batch key) of the extra teachers' logits


def open_extra_caches(primary: TeacherCache, extra: dict[str, tuple[Path, dict]], verify: str) -> list[TeacherCache]:
    """The caches of the extra teachers, in order: `extra` maps a teacher's name to (its cache dir, the record of the
    params that should have made it: `Params.teacher_record`). Each is refused with one line naming the fix when it
    is missing, was made by other params, or does not fit the main cache."""
    caches = []
    for name, (path, record) in extra.items():
        path = Path(path)
        rerun = f"run `dvc repro extract-{name}`"
        if not (path / MANIFEST).is_file():
            raise PipelineError(f"{path}: no cache of teacher '{name}' ({MANIFEST} missing); {rerun}")
        cache = TeacherCache(path, verify=verify)
        made_by = cache.manifest.get("teacher_params")
        if made_by != record:
            diff = sorted(k for k in set(made_by or {}) | set(record) if (made_by or {}).get(k) != record.get(k))
            shown = ", ".join(f"{k}: {(made_by or {}).get(k)!r} in the cache, {record.get(k)!r} in params" for k in diff)
            raise PipelineError(f"{path / MANIFEST}: teacher '{name}' was cached from other params ({shown}); {rerun}")
        mine, main = cache.manifest, primary.manifest
        checks = {
            "tokenizer": (mine["tokenizer"]["fingerprint"], main["tokenizer"]["fingerprint"]),
            "max_length": (mine["max_length"], main["max_length"]),
            "label_names": (mine["label_names"], main["label_names"]),
            "task": (mine.get("task"), main.get("task")),
            **{f"prepared split '{s}'": (mine["dataset"].get(s), main["dataset"][s]) for s in main["dataset"]},
        }
        for what, (theirs, ours) in checks.items():
            if theirs != ours:
                raise PipelineError(
                    f"{path / MANIFEST}: teacher '{name}' was cached with another {what} than {primary.cache_dir} "
                    f"({theirs!r} vs {ours!r}); {rerun} after `dvc repro prepare`"
                )
        caches.append(cache)
    return caches


class JoinedSplit(torch.utils.data.Dataset):
    """A split of the main cache whose rows also carry the extra teachers' logits for the same example:
    row[EXTRA_LOGITS] is (teachers, labels) per example or (teachers, tokens, labels) per token."""

    def __init__(self, split: CacheSplit, extras: list[CacheSplit], field: str):
        self.split, self.extras, self.field = split, extras, field
        ids = split.column("example_id")
        self.rows = []
        for extra in extras:
            theirs = extra.column("example_id")
            order = np.argsort(theirs, kind="stable")
            at = np.searchsorted(theirs[order], ids)
            found = at < len(theirs)
            if len(theirs) != len(ids) or not found.all() or not (theirs[order[at]] == ids).all():
                raise PipelineError(
                    f"{extra.cache_dir}: split '{split.name}' holds other examples than {split.cache_dir}'s; rerun its "
                    "extract stage"
                )
            self.rows.append(order[at])

    def __len__(self) -> int:
        return len(self.split)

    @property
    def name(self) -> str:
        return self.split.name

    def lengths(self) -> np.ndarray:
        return self.split.lengths()

    def __getitem__(self, index: int) -> dict:
        row = self.split[index]
        row[EXTRA_LOGITS] = np.stack([e[int(r[index])][self.field] for e, r in zip(self.extras, self.rows)])
        return row

    def __getitems__(self, indices: list[int]) -> Rows:
        rows = self.split.__getitems__(indices)
        theirs = [e.__getitems__(r[indices].tolist()).values(self.field) for e, r in zip(self.extras, self.rows)]
        rows.columns[EXTRA_LOGITS] = [np.stack(per_row) for per_row in zip(*theirs)]
        return rows


def join_teachers(split: CacheSplit, caches: list[TeacherCache], field: str) -> CacheSplit | JoinedSplit:
    """`split` with the extra teachers' logits joined (as it is when there are none)."""
    if not caches:
        return split
    return JoinedSplit(split, [c.split(split.name, [field]) for c in caches], field)
