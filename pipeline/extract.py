"""Stage one: run the fine-tuned teacher once over the prepared splits and write its outputs to the cache."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import shutil
import threading
import time
from pathlib import Path
from typing import Callable

import datasets
import numpy as np
import torch
import transformers
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoTokenizer

from pipeline.cache import CacheBatch, CacheWriter, FieldSpec, attention_field, hidden_field, token_fields, value_field
from pipeline.cache.schema import SCALE_SUFFIX, TEACHER_CONFIG, TOKENIZER_DIR, file_sha256, write_json_atomic
from pipeline.errors import PipelineError
from pipeline.mlm import (MASKED_LM, MLM_TARGET, TOPK_INDICES, TOPK_VALUES, auto_model_class, head_task, index_dtype,
                          mask_tokens)
from pipeline.models import model_fingerprint, tokenizer_fingerprint

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PipelineError(f"params.yaml: extract.device is '{name}' but no CUDA device is visible; use 'auto' or 'cpu'")
    return torch.device(name)


def _layer_indices(layers: list[int], num_hidden_layers: int, lowest: int, key: str, valid: str) -> list[int]:
    """Layer numbers (negative from the end) -> sorted unique indices in lowest..N, or one error naming the key."""
    out = []
    for layer in layers:
        index = layer + num_hidden_layers + 1 if layer < 0 else layer
        if not lowest <= index <= num_hidden_layers:
            raise PipelineError(f"params.yaml: {key} has {layer}, out of range: the teacher has {valid}")
        out.append(index)
    return sorted(set(out))


def normalize_layers(layers: list[int], num_hidden_layers: int) -> list[int]:
    """hidden_states indices: 0 = embeddings, N = last layer."""
    return _layer_indices(layers, num_hidden_layers, 0, "extract.layers",
                          f"hidden states 0 (embeddings) .. {num_hidden_layers} (last layer)")


def normalize_model_layers(layers: list[int], num_hidden_layers: int, key: str) -> list[int]:
    """Transformer layer numbers 1..N, for attentions and values."""
    return _layer_indices(layers, num_hidden_layers, 1, key, f"layers 1 .. {num_hidden_layers}")


def value_projection(model, layer: int):
    """The self-attention value projection of transformer layer `layer` (1-based) of a BERT-like model."""
    try:
        return model.base_model.encoder.layer[layer - 1].attention.self.value
    except AttributeError:
        raise PipelineError(f"extract.values: the teacher ({type(model).__name__}) has no BERT-style "
                            "encoder.layer[i].attention.self.value; cache values only for BERT-like teachers") from None


def length_sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Row indices grouped into batches of similar length, so padding waste is small."""
    order = np.argsort(lengths, kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def quantize_int8(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token absmax int8: q = round(x / s), s = max|x| / 127 stored as fp16 (q is computed with the stored s)."""
    scale = (t.float().abs().amax(dim=-1, keepdim=True) / 127).clamp_min(1e-8).half().float()
    return torch.round(t.float() / scale).clamp_(-127, 127).to(torch.int8), scale.half()


def to_storage(t: torch.Tensor, dtype: str, name: str) -> dict[str, torch.Tensor]:
    """A (tokens, width) float tensor -> the tensors of its stored field(s) (see `token_fields`), on t's device."""
    if dtype == "bfloat16":
        return {name: t.to(torch.bfloat16).view(torch.int16)}
    if dtype == "int8":
        q, scale = quantize_int8(t)
        return {name: q, name + SCALE_SUFFIX: scale}
    return {name: t.to(torch.float16)}


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.numpy().view(np.uint16) if t.dtype == torch.int16 else t.numpy()


def to_host(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, np.ndarray], None]:
    """CPU tensors -> numpy arrays (no copy). On a GPU, `PinnedRing.download` does this job."""
    return {name: _numpy(t) for name, t in tensors.items()}, None


class HostCopy:
    """One batch's device->host copies in flight: `synchronize()` returns once they landed in the pinned buffer;
    `release()` hands the buffer back to the ring (the writer thread calls it once the batch is written)."""

    def __init__(self, event: torch.cuda.Event, ring: "PinnedRing", slot: int):
        self.event, self.ring, self.slot = event, ring, slot

    def synchronize(self) -> None:
        self.event.synchronize()

    def release(self) -> None:
        if self.ring is not None:
            self.ring.release(self.slot)
            self.ring = None


class PinnedRing:
    """A few pinned host buffers reused batch after batch, for a GPU teacher's inputs and outputs.

    Allocating pinned memory (cudaHostAlloc) is slow, and a fresh allocation per batch and field made a one-shot
    extraction spend seconds page-locking memory (a second extraction in the same process, served by torch's caching
    host allocator, ran 3x faster). Each batch takes a slot (waiting while the writer holds all of them), stages its
    padded inputs there for the host->device copy and receives its outputs there by non-blocking device->host copies;
    the writer releases the slot after writing the batch. The outputs land over the inputs' bytes: the stream runs
    the device->host copies after the forward, which runs after the host->device copies. A slot grows (doubling) when
    a batch needs more room.
    """

    ALIGN = 64

    def __init__(self, slots: int, initial_bytes: int = 16 << 20):
        self.buffers: list[torch.Tensor | None] = [None] * slots
        self.initial_bytes = initial_bytes
        self.free: queue.Queue = queue.Queue()
        for i in range(slots):
            self.free.put(i)
        self.wait_s = 0.0

    def acquire(self) -> int:
        started = time.perf_counter()
        slot = self.free.get()
        self.wait_s += time.perf_counter() - started
        return slot

    def release(self, slot: int) -> None:
        self.free.put(slot)

    def _views(self, slot: int, specs: list[tuple[tuple[int, ...], torch.dtype]]) -> list[torch.Tensor]:
        sizes = [int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size() for shape, dtype in specs]
        offsets, end = [], 0
        for size in sizes:
            offsets.append(end)
            end += -(-size // self.ALIGN) * self.ALIGN
        buf = self.buffers[slot]
        if buf is None or buf.numel() < end:
            # a batch in flight on an old buffer keeps it alive: torch's host allocator waits for its copies
            self.buffers[slot] = buf = torch.empty(max(end, 2 * (buf.numel() if buf is not None else self.initial_bytes // 2)),
                                                   dtype=torch.uint8, pin_memory=True)
        return [buf[o:o + n].view(dtype).view(shape) for o, n, (shape, dtype) in zip(offsets, sizes, specs)]

    def upload(self, slot: int, arrays: list[np.ndarray], device: torch.device) -> list[torch.Tensor]:
        """Host arrays -> device tensors through the slot's pinned memory, without blocking the host."""
        views = self._views(slot, [(a.shape, torch.from_numpy(a[:0]).dtype) for a in arrays])
        out = []
        for view, array in zip(views, arrays):
            view.numpy()[...] = array
            out.append(view.to(device, non_blocking=True))
        return out

    def download(self, slot: int, tensors: dict[str, torch.Tensor]) -> tuple[dict[str, np.ndarray], HostCopy]:
        """Device tensors -> numpy arrays in the slot: non-blocking copies, and the HostCopy to wait on before reading
        them; the arrays stay valid until the slot is released."""
        views = self._views(slot, [(tuple(t.shape), t.dtype) for t in tensors.values()])
        host = {}
        for view, (name, t) in zip(views, tensors.items()):
            view.copy_(t, non_blocking=True)
            host[name] = _numpy(view)
        event = torch.cuda.Event()
        event.record()
        return host, HostCopy(event, self, slot)


JOURNAL = "journal.json"


def work_dir_for(out_dir: Path) -> Path:
    """Where an extraction in progress lives: beside the cache, not inside it, so `dvc repro` (which deletes a stage's
    outputs before running it) leaves finished shards of an interrupted run alone."""
    return out_dir.parent / f".{out_dir.name}.partial"


def _job_key(meta: dict, fields: list[FieldSpec], batch_size: int, shard_max_bytes: int) -> str:
    """Everything that decides the bytes of the shards; a work dir made under another key is discarded."""
    spec = {"meta": meta, "fields": [f.__dict__ for f in fields], "batch_size": batch_size, "shard_max_bytes": shard_max_bytes}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _load_journal(work: Path, key: str) -> dict[str, dict]:
    """Verified progress of an interrupted run: per split, the shards whose sha256 still matches, in order."""
    journal = work / JOURNAL
    state = {}
    if journal.is_file():
        saved = json.loads(journal.read_text())
        if saved.get("key") == key:
            for split, entry in saved["splits"].items():
                good = []
                for shard in entry["shards"]:
                    path = work / shard["record"]["file"]
                    if not (path.is_file() and path.stat().st_size == shard["record"]["bytes"]
                            and file_sha256(path) == shard["record"]["sha256"]):
                        break
                    good.append(shard)
                state[split] = {"shards": good, "done": entry["done"] and len(good) == len(entry["shards"])}
    keep = {s["record"]["file"] for entry in state.values() for s in entry["shards"]}
    if work.exists():
        for path in work.iterdir():  # partial shards (.tmp), shards past a bad one, files of another job
            if path.name not in keep:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    return state


def _save_journal(work: Path, key: str, state: dict) -> None:
    write_json_atomic(work / JOURNAL, {"key": key, "splits": state})


class _ShardWriterThread:
    """Writes batches and keeps the journal on a background thread, so Arrow building, file writes and shard hashing
    overlap the next teacher forward. The bounded queue caps memory; a writer error is raised in the main thread."""

    def __init__(self, writer: CacheWriter, work: Path, key: str, state: dict, depth: int = 2):
        self.writer, self.work, self.key, self.state = writer, work, key, state
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.depth = depth
        self.error: BaseException | None = None
        self.busy_s = self.wait_s = 0.0  # writer thread busy; producer blocked on a full queue (writer-bound)
        self.thread = threading.Thread(target=self._run, name="cache-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            kind, split, batch, batch_end, ready = item
            try:
                if self.error is None:  # after a failure: drain (and free pinned buffers) so the producer never blocks
                    self._handle(kind, split, batch, batch_end, ready)
            finally:
                if ready is not None:
                    ready.release()

    def _handle(self, kind, split, batch, batch_end, ready) -> None:
        started = time.perf_counter()
        try:
            if ready is not None:
                ready.synchronize()  # the batch's device->host copies have landed
            entry = self.state[split]
            # a shard enters the journal once it is renamed and hashed, tagged with the batch count it ends at
            done = (self.writer.write(split, batch, tag=batch_end) if kind == "batch"
                    else self.writer.finish_split(split, tag=batch_end))
            for record, tag in done:
                entry["shards"].append({"record": record, "batch_end": tag})
            if kind == "finish":
                entry["done"] = True
            if done or kind == "finish":
                _save_journal(self.work, self.key, self.state)
        except BaseException as exc:  # re-raised in the main thread by put()/close()
            self.error = exc
            self._salvage()
        self.busy_s += time.perf_counter() - started

    def _salvage(self) -> None:
        """Journal the shards that finished hashing before the failure, so a rerun keeps them."""
        try:
            salvaged = self.writer.salvage()
            for split, done in salvaged.items():
                self.state.setdefault(split, {"shards": [], "done": False})["shards"].extend(
                    {"record": record, "batch_end": tag} for record, tag in done)
            if any(salvaged.values()):
                _save_journal(self.work, self.key, self.state)
        except Exception:  # noqa: BLE001 - the original error is the one to report
            log.exception("could not journal the finished shards after a write error")

    def put(self, kind: str, split: str, batch: CacheBatch | None, batch_end: int, ready=None) -> None:
        if self.error is not None:
            raise self.error
        started = time.perf_counter()
        self.queue.put((kind, split, batch, batch_end, ready))
        self.wait_s += time.perf_counter() - started

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


def extract_cache(teacher_dir: Path, splits: dict[str, datasets.Dataset], out_dir: Path, *, layers: list[int], dtype: str,
                  batch_size: int, shard_max_bytes: int, device: str, max_length: int, label_names: list[str],
                  dataset_fingerprints: dict[str, str], on_batch: Callable[[str, int], None] | None = None,
                  attentions: list[int] = (), values: list[int] = (), topk: int = 8, mlm_probability: float = 0.15,
                  mask_seed: int = 0) -> dict:
    """Write the cache for `splits` to `out_dir`. Returns the manifest plus timing stats.

    A sequence classifier's cache holds its logits per example; a masked-LM teacher's (see `pipeline.mlm`) holds, per
    real token of the seeded-masked rows it saw, the `topk` largest vocabulary logits and their indices and the
    masking target (`mlm_probability` of the tokens are masked under `mask_seed`).

    Work happens in `work_dir_for(out_dir)` with a journal of completed shards; rerun after a crash (even `kill -9`),
    finished shards are checked against their sha256 and kept, the rest is computed, and the result is byte-identical
    to an uninterrupted run. The finished cache is moved into `out_dir` in one rename at the end.
    """
    teacher_dir, out_dir = Path(teacher_dir), Path(out_dir)
    dev = resolve_device(device)
    teacher_config = AutoConfig.from_pretrained(teacher_dir)
    task = head_task(teacher_config)
    # attention maps need the eager implementation: fused kernels never materialise them
    model = auto_model_class(teacher_config).from_pretrained(
        teacher_dir, use_safetensors=True, **({"attn_implementation": "eager"} if attentions else {})).to(dev).eval()
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    n_layers, hidden, heads = model.config.num_hidden_layers, model.config.hidden_size, model.config.num_attention_heads
    layers = normalize_layers(layers, n_layers)
    attentions = normalize_model_layers(list(attentions), n_layers, "extract.attentions")
    values = normalize_model_layers(list(values), n_layers, "extract.values")
    masking = None
    if task == MASKED_LM:
        vocab = model.config.vocab_size
        if not 0 < topk <= vocab:
            raise PipelineError(f"params.yaml: extract.topk is {topk}; it must be between 1 and the vocabulary size {vocab}")
        if tokenizer.mask_token_id is None:
            raise PipelineError(f"{teacher_dir}: the teacher's tokenizer has no mask token; a masked-LM teacher needs one")
        masking = {"seed": mask_seed, "probability": mlm_probability, "mask_token_id": tokenizer.mask_token_id,
                   "vocab_size": vocab, "special_ids": sorted(set(tokenizer.all_special_ids))}
        fields = [FieldSpec(MLM_TARGET, "token", "int32", 1), FieldSpec(TOPK_VALUES, "token", "float16", topk),
                  FieldSpec(TOPK_INDICES, "token", index_dtype(vocab), topk)]
    else:
        fields = [FieldSpec("logits", "example", "float32", model.config.num_labels)]
    fields += [f for layer in layers for f in token_fields(hidden_field(layer), dtype, hidden)]
    att_dtype = "float16" if dtype == "int8" else dtype  # probabilities: per-token absmax int8 does not apply
    fields += [FieldSpec(attention_field(layer), "token_pair", att_dtype, heads) for layer in attentions]
    fields += [f for layer in values for f in token_fields(value_field(layer), dtype, hidden)]
    meta = {
        "teacher": {**model_fingerprint(teacher_dir), "model_type": model.config.model_type, "num_hidden_layers": n_layers},
        "tokenizer": {"fingerprint": tokenizer_fingerprint(tokenizer), "dir": TOKENIZER_DIR},
        "max_length": max_length, "layers": layers, "hidden_size": hidden, "dtype": dtype, "label_names": label_names,
        "attentions": attentions, "values": values, "num_heads": heads,
        "dataset": dataset_fingerprints,
        "versions": {"torch": torch.__version__.split("+")[0], "transformers": transformers.__version__},
    }
    if masking is not None:  # classifier caches keep their manifest (and bytes) as before
        meta.update({"task": MASKED_LM, "topk": topk, "vocab_size": masking["vocab_size"],
                     "masking": {k: masking[k] for k in ("seed", "probability", "mask_token_id", "special_ids")}})

    work = work_dir_for(out_dir)
    key = _job_key(meta, fields, batch_size, shard_max_bytes)
    state = _load_journal(work, key)
    state = {name: state[name] for name in splits if name in state}  # split order decides manifest order
    work.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(work / TOKENIZER_DIR)
    shutil.copy(teacher_dir / "config.json", work / TEACHER_CONFIG)
    pad_id = tokenizer.pad_token_id or 0
    stats = {}
    resume = {name: [s["record"] for s in entry["shards"]] for name, entry in state.items()}
    with CacheWriter(work, fields, meta, shard_max_bytes, resume=resume) as writer:
        sink = _ShardWriterThread(writer, work, key, state)
        captured: dict[int, torch.Tensor] = {}
        hooks = [value_projection(model, layer).register_forward_hook(
            lambda module, args, output, layer=layer: captured.__setitem__(layer, output)) for layer in values]
        try:
            _extract_splits(model, dev, splits, state, sink, layers, dtype, batch_size, pad_id, stats, on_batch,
                            attentions, att_dtype, captured, masking, topk)
        finally:
            last_batch = time.perf_counter()
            sink.close()
            for hook in hooks:
                hook.remove()
        manifest = writer.close()
    # busy: the writer thread's time on batches; producer_wait: the teacher loop blocked on a full queue (the writer is
    # the bottleneck when it is large); tail: after the last forward, until the last shard is hashed and the manifest out
    writer_stats = {"busy_s": round(sink.busy_s, 3), "producer_wait_s": round(sink.wait_s, 3),
                    "tail_s": round(time.perf_counter() - last_batch, 3)}
    (work / JOURNAL).unlink()
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(work, out_dir)
    return {"manifest": manifest, "stats": stats, "writer": writer_stats}


def pad_rows(flat_ids: np.ndarray, starts: np.ndarray, lens: np.ndarray, width: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a flat token array (row i = flat_ids[starts[i]:starts[i] + lens[i]]) -> (rows, width) int64 ids padded
    with pad_id, and the boolean mask of real tokens; one gather, no per-row Python loop."""
    mask = np.arange(width)[None, :] < lens[:, None]
    positions = np.minimum(starts[:, None] + np.arange(width)[None, :], max(len(flat_ids) - 1, 0))
    return np.where(mask, flat_ids[positions], pad_id).astype(np.int64), mask


def _extract_splits(model, dev, splits, state, sink, layers, dtype, batch_size, pad_id, stats, on_batch, attentions=(),
                    att_dtype="float16", captured=None, masking=None, topk=0) -> None:
    """The hot loop: length-sorted batches through the teacher; rows handed to the writer thread.

    On a GPU the teacher runs under bf16 autocast, entered once for the whole loop: leaving an autocast region drops its
    cache of bf16 weight copies, so entering it per batch would re-cast every weight (hundreds of kernels) per batch."""
    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        _extract_loop(model, dev, splits, state, sink, layers, dtype, batch_size, pad_id, stats, on_batch, attentions,
                      att_dtype, captured, masking, topk)


def _extract_loop(model, dev, splits, state, sink, layers, dtype, batch_size, pad_id, stats, on_batch, attentions,
                  att_dtype, captured, masking, topk) -> None:
    # slots: the writer's queue, the batch it writes, the one being computed, one spare
    ring = PinnedRing(getattr(sink, "depth", 2) + 2) if dev.type == "cuda" else None
    for split, ds in splits.items():
        entry = state.setdefault(split, {"shards": [], "done": False})
        table = ds.data.table if hasattr(ds.data, "table") else ds.data
        lengths = table.column("length").to_numpy()
        ids_col = table.column("input_ids").combine_chunks()
        offsets, flat_ids = ids_col.offsets.to_numpy(), ids_col.values.to_numpy()
        example_ids, labels = table.column("example_id").to_numpy(), table.column("label").to_numpy()
        batches = length_sorted_batches(lengths, batch_size)
        first = len(batches) if entry["done"] else (entry["shards"][-1]["batch_end"] if entry["shards"] else 0)
        if first:
            log.info("extract %s: resuming after batch %d of %d (%d shards verified)", split, first, len(batches),
                     len(entry["shards"]))
        padded_tokens = real_tokens = 0
        start = time.perf_counter()
        for bi in tqdm(range(first, len(batches)), desc=f"extract {split}", unit="batch", initial=first, total=len(batches)):
            rows = batches[bi]
            lens = lengths[rows]
            width = int(lens.max())
            input_ids, mask = pad_rows(flat_ids, offsets[rows], lens, width, pad_id)
            host_fields = {}
            if masking is not None:  # the teacher sees (and the cache keeps) the masked row
                input_ids, targets = mask_tokens(input_ids, mask, example_ids[rows], **masking)
                host_fields[MLM_TARGET] = targets[mask].astype(np.int32)[:, None]
            # everything the device needs goes over in one non-blocking step; real tokens are picked on the device by
            # index (a boolean mask there would make the host wait for the GPU before it can queue the next batch)
            host_in = [input_ids, mask.astype(np.int64), np.flatnonzero(mask)]
            if ring is not None:  # a pinned slot for this batch's inputs and outputs, free once the writer is done with it
                slot = ring.acquire()
                ids_t, mask_t, real_index = ring.upload(slot, host_in, dev)
            else:
                ids_t, mask_t, real_index = (torch.from_numpy(a) for a in host_in)
            out = model(input_ids=ids_t, attention_mask=mask_t, output_hidden_states=True, output_attentions=bool(attentions))

            def tokens(t: torch.Tensor) -> torch.Tensor:  # (batch, width, d) -> (real tokens, d), row-major
                return t.reshape(-1, t.shape[-1]).index_select(0, real_index)

            if masking is None:
                device_out = {"logits": out.logits.float()}
            else:  # the k largest vocabulary logits of each real token; indices narrowed to the field's dtype on the host
                top = tokens(out.logits).topk(topk, dim=-1)
                device_out = {TOPK_VALUES: top.values.to(torch.float16), TOPK_INDICES: top.indices.to(torch.int32)}
            for layer in layers:
                device_out.update(to_storage(tokens(out.hidden_states[layer]), dtype, hidden_field(layer)))
            if attentions:
                for layer in attentions:  # only the real-token block of each example's heads x len x len map
                    att = out.attentions[layer - 1]
                    flat = torch.cat([att[j, :, :n, :n].reshape(-1) for j, n in enumerate(lens.tolist())])
                    device_out.update(to_storage(flat, att_dtype, attention_field(layer)))
            for layer, value in (captured or {}).items():
                device_out.update(to_storage(tokens(value), dtype, value_field(layer)))
            fields_out, ready = ring.download(slot, device_out) if ring is not None else to_host(device_out)
            fields_out.update(host_fields)
            sink.put("batch", split, CacheBatch(example_id=example_ids[rows], length=lens, label=labels[rows],
                                                input_ids=input_ids[mask].astype(np.int32), fields=fields_out),
                     bi + 1, ready)
            padded_tokens += len(rows) * width
            real_tokens += int(lens.sum())
            if on_batch is not None:
                on_batch(split, bi)
        if not entry["done"]:
            sink.put("finish", split, None, len(batches))
        stats[split] = {"seconds": time.perf_counter() - start, "rows": len(ds), "tokens": int(lengths.sum()),
                        "resumed_batches": first, "padding_fraction": 1 - real_tokens / max(padded_tokens, 1)}
    if ring is not None and hasattr(sink, "wait_s"):
        sink.wait_s += ring.wait_s  # waiting for a pinned slot the writer still holds is waiting on the writer too


def write_extract_report(path: Path, result: dict) -> None:
    manifest = result["manifest"]
    tokens = sum(s["tokens"] for s in manifest["splits"].values())
    report = {"bytes": manifest["bytes"], "tokens": tokens, "bytes_per_token": manifest["bytes"] / max(tokens, 1),
              "bytes_per_token_per_layer": manifest["bytes"] / max(tokens, 1) / max(len(manifest["layers"]), 1),
              "shards": sum(len(s["shards"]) for s in manifest["splits"].values()), "splits": result["stats"],
              "writer": result["writer"]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
