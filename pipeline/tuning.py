"""Carving a tuning split by source sentence.

A file like SST-2's train split holds every phrase of each sentence's parse tree as its own labelled row. A tuning row
drawn from it at random shares its sentence with dozens of training rows, so scores on it run ahead of scores on dev
(whose sentences are nowhere in train). The carve here takes whole sentences: tuning rows are drawn among the rows that no
other row contains (as a run of tokens), and every row found only inside tuning rows leaves the train and transfer pool.
A row also found inside some other sentence stays, exactly as SST's own train/dev split keeps shared phrases. On a file
without nested rows this is a plain seeded carve of unique rows.

Containment is tested with polynomial hashes of every token run (mod 2^64, vectorised per run length), so the cost is
the number of tokens times the number of distinct row lengths, not the number of row pairs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_BASE = 0x9E3779B97F4A7C15  # odd, so invertible mod 2^64
_INVERSE = pow(_BASE, -1, 2**64)


def _powers(base: int, n: int) -> np.ndarray:
    """base**0 .. base**(n-1) mod 2^64 (uint64 arithmetic wraps)."""
    factors = np.full(n, base, dtype=np.uint64)
    if n:
        factors[0] = 1
    return np.cumprod(factors, dtype=np.uint64)


class TokenRuns:
    """Hashes of the rows of a token-row list and of every token run inside them, per run length."""

    def __init__(self, rows: Sequence[Sequence[int]]):
        self.lengths = np.array([len(r) for r in rows], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        total = int(self.starts[-1])
        tokens = np.concatenate([np.asarray(r, dtype=np.uint64) for r in rows]) if total else np.zeros(0, np.uint64)
        tokens = tokens + np.uint64(1)  # token 0 must still count
        self.power = _powers(_BASE, total)
        self.prefix = np.zeros(total + 1, dtype=np.uint64)
        np.cumsum(tokens * _powers(_INVERSE, total), out=self.prefix[1:])
        self.row_hash = self._hash(self.starts[:-1], self.lengths)

    def _hash(self, start: np.ndarray, length: np.ndarray) -> np.ndarray:
        """Hash of the run of `length` tokens at each flat position `start` (independent of the position)."""
        return (self.prefix[start + length] - self.prefix[start]) * self.power[start]

    def runs(self, length: int, rows: np.ndarray | None = None, longer_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Hashes of every run of `length` tokens inside `rows` (a boolean mask; all rows when None), only inside rows
        longer than `length` when `longer_only`, and the row each run lies in."""
        keep = self.lengths > length if longer_only else self.lengths >= length
        keep = keep & (length > 0)  # an empty run is in every row: never a link
        if rows is not None:
            keep = keep & rows
        counts = np.where(keep, self.lengths - length + 1, 0)
        row = np.repeat(np.arange(len(self.lengths)), counts)
        positions = np.arange(len(row)) - np.repeat(np.cumsum(counts) - counts, counts) + self.starts[row]
        return self._hash(positions, np.full(len(positions), length)), row


def contained_rows(runs: TokenRuns) -> np.ndarray:
    """Rows found as a run of tokens inside some longer row."""
    out = np.zeros(len(runs.lengths), dtype=bool)
    for length in np.unique(runs.lengths):
        at = runs.lengths == length
        out[at] = np.isin(runs.row_hash[at], runs.runs(int(length), longer_only=True)[0])
    return out


class TuningLinks:
    """What ties a token row to the tuning sentences: it is a tuning row, lies only inside tuning rows (not inside
    any other sentence of the file), or contains a tuning row."""

    def __init__(self, runs: TokenRuns, tuning: np.ndarray, others: np.ndarray):
        lengths = np.unique(runs.lengths)
        self.inside_tuning = {int(n): np.unique(runs.runs(int(n), rows=tuning)[0]) for n in lengths}
        self.inside_others = {int(n): np.unique(runs.runs(int(n), rows=others)[0]) for n in lengths}
        self.tuning = {int(n): np.unique(runs.row_hash[tuning & (runs.lengths == n)]) for n in lengths}
        self.tuning = {n: h for n, h in self.tuning.items() if len(h)}

    def mask(self, rows: Sequence[Sequence[int]] | TokenRuns) -> np.ndarray:
        runs = rows if isinstance(rows, TokenRuns) else TokenRuns(rows)
        linked = np.zeros(len(runs.lengths), dtype=bool)
        for length in np.unique(runs.lengths):
            n, at = int(length), runs.lengths == length
            inside = np.isin(runs.row_hash[at], self.inside_tuning.get(n, []))
            elsewhere = np.isin(runs.row_hash[at], self.inside_others.get(n, []))
            linked[at] = inside & ~elsewhere
        for n, hashes in self.tuning.items():  # rows holding a whole tuning sentence (another file's longer texts)
            found, row = runs.runs(n, rows=~linked, longer_only=True)
            linked[row[np.isin(found, hashes)]] = True
        return linked


def carve_by_sentence(
    rows: Sequence[Sequence[int]], excluded: set[tuple], n: int, seed: int
) -> tuple[np.ndarray, np.ndarray, TuningLinks | None, int]:
    """Draw `n` tuning rows among the rows no other row contains (one per distinct text, none in `excluded`, e.g. dev
    texts). Returns the chosen row indices (sorted), a mask of the rows left for training (not tied to a tuning
    sentence), the links (to filter other row sets such as transfer texts) and how many rows were eligible."""
    runs = TokenRuns(rows)
    maximal = ~contained_rows(runs) & (runs.lengths > 0)
    _, first = np.unique(runs.row_hash, return_index=True)
    distinct = np.zeros(len(rows), dtype=bool)
    distinct[first] = True
    eligible = np.flatnonzero(maximal & distinct & np.array([tuple(r) not in excluded for r in rows]))
    if len(eligible) <= n:
        return eligible[:0], np.ones(len(rows), dtype=bool), None, len(eligible)
    chosen = np.sort(np.random.default_rng(seed).permutation(eligible)[:n])
    tuning = np.isin(runs.row_hash, runs.row_hash[chosen])  # the chosen texts and any copies of them
    links = TuningLinks(runs, tuning, maximal & ~tuning)
    return chosen, ~links.mask(runs), links, len(eligible)
