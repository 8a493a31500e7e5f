"""The extraction hot loop: length-sorted batches through the teacher, each batch's outputs encoded on the device and
handed, with its host copy in flight, to a sink (the journaled writer thread of `pipeline.journal`, or a benchmark's).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import datasets
import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline.cache import CacheBatch, FieldSpec, attention_field, hidden_field, token_fields, value_field
from pipeline.cache.basis import BasisFit, project
from pipeline.cache.codec import encode
from pipeline.cache.layout import batch_nbytes, shard_ends
from pipeline.journal import BatchSink
from pipeline.layers import relation_input
from pipeline.pinned import PinnedRing, to_host
from pipeline.tasks.sequence_classification.fields import SequenceClassificationFields

log = logging.getLogger(__name__)


def length_sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Row indices grouped into batches of similar length, so padding waste is small."""
    order = np.argsort(lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def rank_batches(batches: list[np.ndarray], lengths: np.ndarray, rank: int, world: int, ends: list[int] | None = None) -> range:
    """The contiguous run of `batches` that rank `rank` of `world` computes under torchrun: cut where the padded
    tokens (rows x width) so far cross each 1/world of the total, so ranks get about equal work although later batches
    are longer. Deterministic, and in order: rank 0's rows, then rank 1's, ... are the one-process run's rows. With
    `ends` (the batch counts after which a one-process run closes a shard, `pipeline.cache.layout.shard_ends`) cuts
    fall only there, so every rank writes whole one-process shards and the cache is byte for byte the same."""
    if world == 1:
        return range(len(batches))
    ends = list(range(1, len(batches) + 1)) if ends is None else ends
    starts = [0, *ends[:-1]]
    batch_cost = np.array([len(b) * int(lengths[b].max()) for b in batches], dtype=np.float64)
    cost = np.array([batch_cost[s:e].sum() for s, e in zip(starts, ends)])
    before = np.cumsum(cost) - cost
    owner = np.minimum((before * world / max(cost.sum(), 1)).astype(np.int64), world - 1)
    first, last = int(np.searchsorted(owner, rank, "left")), int(np.searchsorted(owner, rank, "right"))
    if first == last:  # no batch for this rank (a split smaller than the world)
        at = starts[first] if first < len(starts) else len(batches)
        return range(at, at)
    return range(starts[first], ends[last - 1])


def pad_rows(
    flat_ids: np.ndarray, starts: np.ndarray, lens: np.ndarray, width: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a flat token array (row i = flat_ids[starts[i]:starts[i] + lens[i]]) -> (rows, width) int64 ids padded
    with pad_id, and the boolean mask of real tokens; one gather, no per-row Python loop."""
    mask = np.arange(width)[None, :] < lens[:, None]
    positions = np.minimum(starts[:, None] + np.arange(width)[None, :], max(len(flat_ids) - 1, 0))
    return np.where(mask, flat_ids[positions], pad_id).astype(np.int64), mask


@dataclass
class LoopPlan:
    """What the teacher loop computes per batch: which outputs, stored how, from batches of which size."""

    layers: list[int]
    dtype: str = "float16"
    batch_size: int = 64
    pad_id: int = 0
    attentions: list[int] = field(default_factory=list)
    values: list[int] = field(default_factory=list)
    task: SequenceClassificationFields = field(default_factory=SequenceClassificationFields)  # the task's fields facet
    task_setup: dict | None = None  # the task's extraction state (a masked-LM teacher's masking and top-k)
    rank: int = 0  # under torchrun: this process computes its part of each split's batches (`rank_batches`)
    world: int = 1
    shard_max_bytes: int = 256 << 20  # the writer's: ranks are cut where it closes shards
    hidden_rank: int | None = None  # extract.rank: hidden layers cached as coefficients in `bases` (cache.basis)
    bases: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # layer -> (mean, components)
    relations: str = "maps"  # extract.relations: "inputs" caches the attention/value layers' inputs (cache.relations)

    @property
    def attention_dtype(self) -> str:
        return "float16" if self.dtype == "int8" else self.dtype  # probabilities: per-token absmax int8 does not apply

    @property
    def hidden_layers(self) -> list[int]:
        """The hidden states stored: `layers`, and under relations 'inputs' those entering the attention/value layers."""
        if self.relations != "inputs":
            return self.layers
        return sorted({*self.layers, *(relation_input(x) for x in (*self.attentions, *self.values))})

    @property
    def stored_relations(self) -> tuple[list[int], list[int]]:
        """(attention layers, value layers) stored as maps and vectors: none under relations 'inputs'."""
        return ([], []) if self.relations == "inputs" else (self.attentions, self.values)

    def fields(self, num_labels: int, hidden: int, heads: int, vocab: int) -> list[FieldSpec]:
        """The cache fields this plan writes, in column order."""
        out = self.task.fields(self.task_setup, num_labels, vocab)
        width = self.hidden_rank or hidden
        attentions, values = self.stored_relations
        out += [f for layer in self.hidden_layers for f in token_fields(hidden_field(layer), self.dtype, width)]
        out += [FieldSpec(attention_field(layer), "token_pair", self.attention_dtype, heads) for layer in attentions]
        out += [f for layer in values for f in token_fields(value_field(layer), self.dtype, hidden)]
        return out


def extract_splits(
    model,
    splits: dict[str, datasets.Dataset],
    plan: LoopPlan,
    sink: BatchSink,
    *,
    state: dict | None = None,
    on_batch: Callable[[str, int], None] | None = None,
    captured: dict | None = None,
) -> dict[str, dict]:
    """The hot loop: length-sorted batches through the teacher (on the device its parameters are on); rows handed to
    `sink`. `state` (the journal's, per split) says where each split resumes; returns per-split timing stats.

    On a GPU the teacher runs under bf16 autocast, entered once for the whole loop: leaving an autocast region drops its
    cache of bf16 weight copies, so entering it per batch would re-cast every weight (hundreds of kernels) per batch."""
    dev = next(model.parameters()).device
    state = {} if state is None else state
    # slots: the sink's queue, the batch it writes, the one being computed, one spare
    ring = PinnedRing(sink.depth + 2) if dev.type == "cuda" else None
    stats = {}
    # every split's journal entry exists before the first batch: the sink's thread serialises `state` while this one
    # runs, so this thread must never add a key to it (a race seen when a split ended as the next one began)
    entries = {split: state.setdefault(split, {"shards": [], "done": False}) for split in splits}
    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        for split, ds in splits.items():
            entry = entries[split]
            loop = _Loop(model, dev, plan, sink, ring, on_batch, {} if captured is None else captured)
            stats[split] = _extract_split(loop, split, ds, entry)
    if ring is not None:
        sink.wait_s += ring.wait_s  # waiting for a pinned slot the writer still holds is waiting on the writer too
    return stats


@dataclass
class _Loop:
    """What every split's pass shares: the teacher and its device, the plan, where batches go, the pinned ring (GPU),
    the progress callback and the value vectors the forward hooks capture."""

    model: torch.nn.Module
    dev: torch.device
    plan: LoopPlan
    sink: BatchSink
    ring: PinnedRing | None
    on_batch: Callable[[str, int], None] | None
    captured: dict


def _extract_split(loop: _Loop, split: str, ds: datasets.Dataset, entry: dict) -> dict:
    """One split through the teacher, from the batch its journal entry resumes at; returns its timing stats."""
    model, dev, plan, sink, ring, on_batch, captured = (
        loop.model,
        loop.dev,
        loop.plan,
        loop.sink,
        loop.ring,
        loop.on_batch,
        loop.captured,
    )
    cols = _Columns(ds, plan)
    lengths, example_ids, labels = cols.lengths, cols.example_ids, cols.labels
    batches = length_sorted_batches(lengths, plan.batch_size)
    ends = None
    if plan.world > 1:  # cut the ranks where one process would close a shard: the same shards, whatever the count
        config = model.config
        fields = plan.fields(config.num_labels, config.hidden_size, config.num_attention_heads, config.vocab_size)
        ends = shard_ends([batch_nbytes(fields, lengths[b]) for b in batches], plan.shard_max_bytes)
    mine = rank_batches(batches, lengths, plan.rank, plan.world, ends)
    first = mine.stop if entry["done"] else (entry["shards"][-1]["batch_end"] if entry["shards"] else mine.start)
    if first > mine.start:
        log.info("extract %s: resuming after batch %d of %d (%d shards verified)", split, first, mine.stop, len(entry["shards"]))
    padded_tokens = real_tokens = 0
    start = time.perf_counter()
    where = f" (rank {plan.rank} of {plan.world})" if plan.world > 1 else ""
    for bi in tqdm(
        range(first, mine.stop),
        desc=f"extract {split}{where}",
        unit="batch",
        initial=first - mine.start,
        total=len(mine),
        disable=None,
    ):
        rows = batches[bi]
        lens, input_ids, mask, host_fields, inputs, aux = cols.batch(rows)
        # everything the device needs goes over in one non-blocking step; real tokens are picked on the device by
        # index (a boolean mask there would make the host wait for the GPU before it can queue the next batch)
        host_in = [input_ids, mask.astype(np.int64), np.flatnonzero(mask), *inputs.values(), *aux.values()]
        if ring is not None:  # a pinned slot for this batch's inputs and outputs, free once the writer is done with it
            slot = ring.acquire()
            ids_t, mask_t, real_index, *more = ring.upload(slot, host_in, dev)
        else:
            ids_t, mask_t, real_index, *more = (torch.from_numpy(a) for a in host_in)
        more, aux_t = more[: len(inputs)], dict(zip(aux, more[len(inputs) :]))
        out = model(
            input_ids=ids_t,
            attention_mask=mask_t,
            **dict(zip(inputs, more)),
            output_hidden_states=True,
            output_attentions=bool(plan.stored_relations[0]),
        )
        device_out = _batch_outputs(out, real_index, lens, plan, captured, aux_t)
        fields_out, ready = ring.download(slot, device_out) if ring is not None else to_host(device_out)
        fields_out.update(host_fields)
        sink.put(
            "batch",
            split,
            CacheBatch(
                example_id=example_ids[rows],
                length=lens,
                label=labels[rows],
                input_ids=input_ids[mask].astype(np.int32),
                fields=fields_out,
            ),
            bi + 1,
            ready,
        )
        padded_tokens += input_ids.size
        real_tokens += int(lens.sum())
        if on_batch is not None:
            on_batch(split, bi)
    if not entry["done"]:
        sink.put("finish", split, None, mine.stop)
    done_rows = np.concatenate([batches[b] for b in mine]) if len(mine) else np.zeros(0, dtype=np.int64)
    return {
        "seconds": time.perf_counter() - start,
        "rows": len(done_rows),
        "tokens": int(lengths[done_rows].sum()),
        "resumed_batches": first - mine.start,
        "padding_fraction": 1 - real_tokens / max(padded_tokens, 1),
    }


class _Columns:
    """A prepared split's columns, and one batch of its rows as the teacher takes it."""

    def __init__(self, ds: datasets.Dataset, plan: LoopPlan):
        table = ds.data.table if hasattr(ds.data, "table") else ds.data
        self.plan = plan
        self.lengths = table.column("length").to_numpy()
        ids_col = table.column("input_ids").combine_chunks()
        self.offsets, self.flat_ids = ids_col.offsets.to_numpy(), ids_col.values.to_numpy()
        self.example_ids, self.labels = table.column("example_id").to_numpy(), table.column("label").to_numpy()
        self.task_columns = {name: _ragged(table.column(name)) for name in plan.task.prepared_columns()}

    def batch(self, rows: np.ndarray) -> tuple:
        """(lengths, padded ids, real-token mask, the task's host fields, the task's extra model inputs, the task's
        device inputs for its device fields)."""
        plan, lens = self.plan, self.lengths[rows]
        input_ids, mask = pad_rows(self.flat_ids, self.offsets[rows], lens, int(lens.max()), plan.pad_id)
        extra = {name: [values[offs[r] : offs[r + 1]] for r in rows] for name, (offs, values) in self.task_columns.items()}
        input_ids, host_fields = plan.task.host_fields(plan.task_setup, input_ids, mask, self.example_ids[rows], extra)
        # e.g. a QA window's segment ids for the forward, a masked LM's uniforms for its device fields
        inputs, aux = plan.task.batch_inputs(plan.task_setup, input_ids, mask, self.example_ids[rows], extra)
        return lens, input_ids, mask, host_fields, inputs, aux


def fit_bases(model, ds: datasets.Dataset, plan: LoopPlan, sample_rows: int, seed: int) -> tuple[dict, dict]:
    """The low-rank basis of each of `plan.hidden_layers` (`pipeline.cache.basis`), fitted on the teacher's outputs for a
    seeded sample of `sample_rows` rows of `ds`, run as extraction runs them. Returns (layer -> (mean, components)
    as float32 numpy, a record for the manifest: sample size and each layer's explained variance)."""
    dev = next(model.parameters()).device
    cols = _Columns(ds, plan)
    n = min(sample_rows, len(cols.lengths))
    sample = np.sort(np.random.default_rng(seed).choice(len(cols.lengths), size=n, replace=False))
    fits = {layer: BasisFit(model.config.hidden_size, dev) for layer in plan.hidden_layers}
    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        for rows in length_sorted_batches(cols.lengths[sample], plan.batch_size):
            _, input_ids, mask, _, inputs, _ = cols.batch(sample[rows])
            out = model(
                input_ids=torch.from_numpy(input_ids).to(dev),
                attention_mask=torch.from_numpy(mask.astype(np.int64)).to(dev),
                **{k: torch.from_numpy(np.asarray(v)).to(dev) for k, v in inputs.items()},
                output_hidden_states=True,
            )
            real = torch.from_numpy(mask).to(dev)
            for layer, fit in fits.items():
                fit.add(out.hidden_states[layer][real])
    bases, explained = {}, {}
    for layer, fit in fits.items():
        mean, components, explained[str(layer)] = fit.basis(plan.hidden_rank)
        bases[layer] = (mean, components)
    record = {"sample_rows": n, "sample_tokens": fits[plan.hidden_layers[0]].count, "explained_variance": explained}
    return bases, record


def _ragged(column) -> tuple[np.ndarray, np.ndarray]:
    """A list column of a prepared split as (offsets, flat values)."""
    column = column.combine_chunks()
    return column.offsets.to_numpy(), column.values.to_numpy()


def _batch_outputs(
    out, real_index: torch.Tensor, lens: np.ndarray, plan: LoopPlan, captured: dict, aux: dict
) -> dict[str, torch.Tensor]:
    """One batch's teacher outputs as the stored fields' tensors, on the device, real tokens only."""

    def tokens(t: torch.Tensor) -> torch.Tensor:  # (batch, width, d) -> (real tokens, d), row-major
        return t.reshape(-1, t.shape[-1]).index_select(0, real_index)

    device_out = plan.task.device_fields(out, tokens, plan.task_setup, **aux)
    for layer in plan.hidden_layers:
        hidden = tokens(out.hidden_states[layer])
        if plan.hidden_rank:
            hidden = project(hidden, *plan.bases[layer])
        device_out.update(encode(hidden, plan.dtype, hidden_field(layer)))
    for layer in plan.stored_relations[0]:  # only the real-token block of each example's heads x len x len map
        att = out.attentions[layer - 1]
        flat = torch.cat([att[j, :, :n, :n].reshape(-1) for j, n in enumerate(lens.tolist())])
        device_out.update(encode(flat, plan.attention_dtype, attention_field(layer)))
    for layer, value in captured.items():
        device_out.update(encode(tokens(value), plan.dtype, value_field(layer)))
    return device_out
