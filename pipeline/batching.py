"""Training batches, for the teacher's Trainer and the students' loop alike: length-grouped batches of a fixed row
count whose order is a function of (seed, epoch), and token-budget batches (distill.batch_tokens)."""

from __future__ import annotations

import numpy as np
import torch
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices


class EpochLengthGroupedSampler(LengthGroupedSampler):
    """Length-grouped order whose epoch e is the (e+1)-th draw of a generator seeded with `seed`: the same order an
    uninterrupted run gives, also when a resumed run starts at epoch e (the loops call `set_epoch`)."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed)
        for _ in range(self.epoch):  # replay the earlier epochs' draws (a permutation each: cheap)
            get_length_grouped_indices(self.lengths, self.batch_size, generator=generator)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


class TokenBudgetBatchSampler(torch.utils.data.Sampler):
    """Training batches under a token budget: the rows sorted by length (rows of equal length in a seeded random
    order), cut into batches of at most `max_rows` rows whose padded size, rows x the longest row, stays within
    `budget` tokens (a row longer than the budget goes alone), the batches then shuffled. Short rows go many to a
    batch and long ones few, so every batch fills about the same compute with almost no padding.

    Epoch e's batches are a function of (seed, e) alone: a resumed run sees the batches an uninterrupted one would.
    The number of batches is the same every epoch (it depends on the sorted lengths only), as the loops' step
    count and schedule need.
    """

    def __init__(self, lengths, budget: int, max_rows: int, seed: int):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.seed, self.epoch = int(seed), 0
        # where the length-sorted rows are cut: the sorted lengths are the same whatever order the ties take, so the
        # cuts (and the batch count) are fixed once; a batch's last row is its longest
        self.cuts, start = [], 0
        for i, size in enumerate(np.sort(self.lengths).tolist()):
            rows = i - start + 1
            if i > start and (rows > max_rows or rows * size > budget):
                self.cuts.append(i)
                start = i

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.cuts) + 1

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        order = np.lexsort((rng.permutation(len(self.lengths)), self.lengths))  # by length, ties in seeded order
        batches = np.split(order, self.cuts)
        for b in rng.permutation(len(batches)):
            yield batches[b].tolist()
