"""Masked-LM teachers: seeded masking, the top-k cache of vocabulary logits, the top-k KL, and a masked-LM student
trained and evaluated from the cache alone."""

import json
import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForMaskedLM, BertForMaskedLM, TrainerCallback

from pipeline.cache import TeacherCache
from pipeline.config import DistillConfig, StudentSpec
from pipeline.distill import distill_student
from pipeline.errors import PipelineError
from pipeline.evaluation import compare_to_teacher, evaluate_saved_model
from pipeline.losses import kd_kl_loss, topk_kd_loss
from pipeline.mlm import IGNORE, MLM_TARGET, TOPK_INDICES, TOPK_VALUES, mask_tokens
from pipeline.params import params_from_dict
from pipeline.tasks.masked_lm import MaskedLMConfig
from pipeline.tasks.student import task_student
from tests.conftest import build_mlm_cache


def test_topk_kl_with_the_whole_vocabulary_is_the_full_kl():
    torch.manual_seed(0)
    student, teacher = torch.randn(3, 5, 11), torch.randn(3, 5, 11) * 3
    positions = torch.rand(3, 5) < 0.6
    top = teacher.topk(11, dim=-1)
    for temperature in (1.0, 2.0):
        full = kd_kl_loss(student[positions], teacher[positions], temperature)
        assert torch.allclose(topk_kd_loss(student, top.values, top.indices, positions, temperature), full, atol=1e-5)


def test_topk_kl_by_hand():
    """Teacher logits [2, 1, 0, -1] with k = 2, uniform student over 4 tokens, T = 1: p = softmax([2, 1]) and
    KL = sum p (log p - log 1/4) = log 4 - H(p)."""
    teacher = torch.tensor([[[2.0, 1.0, 0.0, -1.0]]])
    top = teacher.topk(2, dim=-1)
    p = [math.e / (math.e + 1), 1 / (math.e + 1)]
    expected = math.log(4) + sum(x * math.log(x) for x in p)
    got = topk_kd_loss(torch.zeros(1, 1, 4), top.values, top.indices, torch.ones(1, 1, dtype=torch.bool), 1.0)
    assert got.item() == pytest.approx(expected, abs=1e-6)
    # T = 2 scales the logits and multiplies by T^2
    p2 = torch.softmax(torch.tensor([2.0, 1.0]) / 2, -1)
    expected2 = 4 * float((p2 * (p2.log() - math.log(0.25))).sum())
    assert topk_kd_loss(
        torch.zeros(1, 1, 4), top.values, top.indices, torch.ones(1, 1, dtype=torch.bool), 2.0
    ).item() == pytest.approx(expected2, abs=1e-6)
    # a student that puts the teacher's top-k mass exactly there: zero; no selected position: zero, still differentiable
    exact = torch.tensor([[[2.0, 1.0, -1e4, -1e4]]], requires_grad=True)
    assert topk_kd_loss(exact, top.values, top.indices, torch.ones(1, 1, dtype=torch.bool), 1.0).item() == pytest.approx(
        0, abs=1e-6
    )
    none = topk_kd_loss(exact, top.values, top.indices, torch.zeros(1, 1, dtype=torch.bool), 1.0)
    none.backward()
    assert none.item() == 0.0


def test_masking_is_seeded_per_example_and_position_not_per_batch():
    rng = np.random.default_rng(0)
    ids = rng.integers(10, 500, size=(400, 40))
    ids[:, 0], ids[:, -1] = 2, 3  # [CLS] ... [SEP]
    real = np.ones_like(ids, dtype=bool)
    real[200:, 30:] = False
    example_ids = np.arange(1000, 1400)
    kwargs = dict(seed=7, probability=0.15, mask_token_id=4, vocab_size=500, special_ids=[0, 1, 2, 3, 4])
    masked, targets = mask_tokens(ids, real, example_ids, **kwargs)
    chosen = targets != IGNORE
    assert not chosen[:, 0].any() and not chosen[:, -1].any() and not chosen[~real].any()  # never specials or padding
    assert (targets[chosen] == ids[chosen]).all() and (masked[~chosen] == ids[~chosen]).all()
    eligible = real.copy()
    eligible[:, [0, -1]] = False
    assert 0.13 < chosen.sum() / eligible.sum() < 0.17
    as_mask = (masked == 4) & chosen
    assert 0.76 < as_mask.sum() / chosen.sum() < 0.84  # 80% [MASK]; the rest random or kept
    # the same rows in another batch, order and width mask the same way; another seed does not
    again, again_targets = mask_tokens(ids[::-1, :35][:100], real[::-1, :35][:100], example_ids[::-1][:100], **kwargs)
    assert (again == masked[::-1, :35][:100]).all() and (again_targets == targets[::-1, :35][:100]).all()
    other, _ = mask_tokens(ids, real, example_ids, **{**kwargs, "seed": 8})
    assert (other != masked).any()


@pytest.fixture(scope="module")
def mlm_cache(tmp_path_factory, mlm_teacher, tiny_prepared):
    out = tmp_path_factory.mktemp("mlm_cache") / "cache"
    build_mlm_cache(mlm_teacher, tiny_prepared, out)
    return out


def test_mlm_cache_holds_the_teachers_topk_on_the_rows_it_saw(mlm_cache, mlm_teacher, tiny_prepared):
    cache = TeacherCache(mlm_cache, verify="full")
    m = cache.manifest
    assert m["task"] == "masked_lm" and m["topk"] == 8 and m["masking"]["probability"] == 0.15
    fields = {f.name: f for f in cache.fields}
    assert "logits" not in fields and fields[TOPK_INDICES].dtype == "uint16" and fields[TOPK_VALUES].dtype == "float16"
    teacher = AutoModelForMaskedLM.from_pretrained(mlm_teacher).eval()
    prepared = {
        int(e): np.asarray(ids) for e, ids in zip(tiny_prepared[0]["dev"]["example_id"], tiny_prepared[0]["dev"]["input_ids"])
    }
    dev = cache.split("dev")
    masked_total = 0
    for i in range(len(dev)):
        row = dev[i]
        original = prepared[row["example_id"]]
        target = row[MLM_TARGET][:, 0]
        chosen = target != IGNORE
        masked_total += int(chosen.sum())
        assert (target[chosen] == original[chosen]).all()
        assert (row["input_ids"][~chosen] == original[~chosen]).all()  # only chosen tokens changed
        with torch.no_grad():
            logits = teacher(input_ids=torch.tensor(row["input_ids"][None].astype(np.int64))).logits[0]
        top = logits.topk(8, dim=-1)
        assert np.allclose(row[TOPK_VALUES].astype(np.float32), top.values.numpy(), atol=2e-2, rtol=1e-3)
        assert (row[TOPK_INDICES][:, 0].astype(np.int64) == top.indices[:, 0].numpy()).all()
    assert masked_total > 0
    # per token: 8 fp16 values + 8 uint16 indices + the int32 target, against 2 bytes x vocabulary for the full logits
    tokens = sum(s["tokens"] for s in m["splits"].values())
    topk_bytes = 8 * 2 + 8 * 2 + 4
    assert topk_bytes * tokens < m["bytes"] < (topk_bytes + 2 * 2 * 32 + 64) * tokens


def test_mlm_extraction_resumes_to_the_same_masking(tmp_path, mlm_teacher, tiny_prepared, mlm_cache):
    """The masking is a function of (seed, example id, position): a second extraction writes identical shards."""
    build_mlm_cache(mlm_teacher, tiny_prepared, tmp_path / "again")
    first = json.loads((mlm_cache / "manifest.json").read_text())
    second = json.loads((tmp_path / "again" / "manifest.json").read_text())
    assert [s["xxh3_128"] for sp in first["splits"].values() for s in sp["shards"]] == [
        s["xxh3_128"] for sp in second["splits"].values() for s in sp["shards"]
    ]


def test_masked_lm_student_learns_from_the_topk_cache(tmp_path, mlm_cache, mlm_teacher):
    """A random-init student sees only the teacher's top-k (alpha = 0): its top-1 agreement with the teacher at the
    masked dev tokens must rise far above its untrained level; evaluate reports masked-token accuracy and agreement."""
    spec = StudentSpec(num_layers=2, hidden_size=32, num_heads=4, init="random")
    cfg = DistillConfig(
        epochs=6,
        batch_size=16,
        learning_rate=2e-3,
        alpha=0.0,
        beta=1.0,
        gamma=0.0,
        temperature=1.0,
        logging_steps=5,
    )
    untrained = DistillConfig(**{**cfg.__dict__, "epochs": 0.01})
    kwargs = dict(batch_size=64, latency_batch_sizes=[1], latency_repeats=2)
    every_token = MaskedLMConfig(mlm_positions="all")
    distill_student(mlm_cache, tmp_path / "before", spec, untrained, seed=0, task_config=every_token)
    before = evaluate_saved_model(tmp_path / "before", mlm_cache, **kwargs)
    result = distill_student(mlm_cache, tmp_path / "student", spec, cfg, seed=0, task_config=every_token)
    assert result["summary"]["task"] == "masked_lm"
    saved = json.loads((tmp_path / "student" / "config.json").read_text())
    assert saved["architectures"] == ["BertForMaskedLM"]
    after = evaluate_saved_model(tmp_path / "student", mlm_cache, **kwargs)
    teacher = evaluate_saved_model(mlm_teacher, mlm_cache, **kwargs)
    assert teacher["teacher_agreement"] == pytest.approx(1.0)  # the teacher agrees with its own cached top-1
    assert after["metric"] == "masked-token accuracy" and after["masked_tokens"] == teacher["masked_tokens"] > 0
    assert after["teacher_agreement"] >= before["teacher_agreement"] + 0.3, (before, after)
    retention = compare_to_teacher(after, teacher)
    assert "f1_retention" not in retention and retention["param_ratio"] < 1


def test_masked_lm_student_with_teacher_init_and_hidden_loss(tmp_path, mlm_cache, mlm_teacher):
    """DistilBERT's recipe from the cache: CE at masked tokens + top-k KL + hidden MSE, student initialised from
    teacher layers 2 and 4 (masked-LM head included)."""
    spec = StudentSpec(num_layers=2, hidden_size=32, init="teacher")
    cfg = DistillConfig(epochs=1, batch_size=16, learning_rate=1e-3, alpha=0.5, beta=0.5, gamma=1.0, logging_steps=5)
    result = distill_student(mlm_cache, tmp_path / "student", spec, cfg, seed=0, teacher_dir=mlm_teacher)
    losses = [h for h in result["history"] if "loss_kl" in h]
    assert losses and all(k in losses[0] for k in ("loss_ce", "loss_kl", "loss_hidden"))
    teacher = BertForMaskedLM.from_pretrained(mlm_teacher)
    student = BertForMaskedLM.from_pretrained(tmp_path / "student")
    assert result["summary"]["layer_pairs"] == [(1, 2), (2, 4)]
    assert student.cls.predictions.transform.dense.weight.shape == teacher.cls.predictions.transform.dense.weight.shape


def test_a_masked_lm_student_from_the_teacher_starts_with_the_teachers_head_by_value(mlm_teacher):
    """init 'teacher' copies the masked-LM head's values (transform and bias), and the decoder stays tied to the copied
    word embeddings."""
    import json

    from safetensors.torch import load_file

    from pipeline.students import build_student

    config = json.loads((mlm_teacher / "config.json").read_text())
    weights = load_file(mlm_teacher / "model.safetensors")
    spec = StudentSpec(num_layers=2, hidden_size=32, init="teacher")
    student, info = build_student(
        spec, config, ["negative", "positive"], mlm_teacher / "model.safetensors", seed=0, task="masked_lm"
    )
    state = student.state_dict()
    head = [k for k in weights if k.startswith("cls.") and not k.endswith("decoder.weight")]
    assert head, "the teacher has masked-LM head tensors to copy"
    for key in head + ["bert.embeddings.word_embeddings.weight"]:
        assert torch.equal(state[key], weights[key]), key
    assert student.cls.predictions.decoder.weight.data_ptr() == student.bert.embeddings.word_embeddings.weight.data_ptr()
    assert torch.equal(state["bert.encoder.layer.1.output.dense.weight"], weights["bert.encoder.layer.3.output.dense.weight"])


def test_a_classifier_is_not_scored_against_a_masked_lm_cache(mlm_cache, tiny_teacher):
    with pytest.raises(PipelineError, match="masked_lm"):
        evaluate_saved_model(tiny_teacher, mlm_cache, batch_size=64, latency_batch_sizes=[], latency_repeats=1)


def test_mlm_params_are_checked():
    with pytest.raises(PipelineError, match="'teacher.task' moved to the top-level key 'task'"):
        params_from_dict({"teacher": {"task": "masked_lm"}, "students": {"s": {"num_layers": 1, "hidden_size": 8}}})
    with pytest.raises(PipelineError, match="'task' must be one of"):
        params_from_dict({"task": "mlm", "students": {"s": {"num_layers": 1, "hidden_size": 8}}})
    with pytest.raises(PipelineError, match="masked_lm.topk"):
        params_from_dict({"masked_lm": {"topk": 0}, "students": {"s": {"num_layers": 1, "hidden_size": 8}}})
    with pytest.raises(PipelineError, match="masked_lm.mlm_probability"):
        params_from_dict({"masked_lm": {"mlm_probability": 1.5}, "students": {"s": {"num_layers": 1, "hidden_size": 8}}})


def test_topk_larger_than_the_vocabulary_is_refused(tmp_path, mlm_teacher, tiny_prepared):
    with pytest.raises(PipelineError, match="masked_lm.topk"):
        build_mlm_cache(mlm_teacher, tiny_prepared, tmp_path / "c", topk=10_000)


def test_a_masked_lm_teacher_is_fine_tuned_from_a_checkpoint_without_an_mlm_head(tmp_path, tiny_teacher, tiny_prepared):
    """The teacher stage's masked_lm path: a checkpoint without a trained MLM head is refused at epochs 0, and
    fine-tuned (new head, output weights tied to the embeddings) otherwise; the saved teacher names its head."""
    from transformers import AutoTokenizer

    from pipeline.config import TeacherConfig
    from pipeline.mlm import MASKED_LM
    from pipeline.models import load_masked_lm
    from pipeline.tasks.heads import head_of_model
    from pipeline.teacher import fine_tune_masked_lm
    from pipeline.trainer import training_arguments

    with pytest.raises(PipelineError, match="no trained masked-LM head"):
        load_masked_lm(str(tiny_teacher), require_head=True)
    model = load_masked_lm(str(tiny_teacher))
    assert model.cls.predictions.decoder.weight.data_ptr() == model.bert.embeddings.word_embeddings.weight.data_ptr()
    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher)
    splits, _ = tiny_prepared
    cfg = TeacherConfig(epochs=2, batch_size=16, learning_rate=1e-3, warmup_ratio=0.0, weight_decay=0.0)
    args = training_arguments(tmp_path / "trainer", cfg, seed=0)
    history = fine_tune_masked_lm(model, tokenizer, splits["train"], splits["dev"], args, 0.15, seed=0)
    dev_losses = [h["eval_loss"] for h in history if "eval_loss" in h]
    assert len(dev_losses) == 2 and dev_losses[-1] < dev_losses[0]
    model.save_pretrained(tmp_path / "teacher")
    assert head_of_model(BertForMaskedLM.from_pretrained(tmp_path / "teacher").config).name == MASKED_LM


@pytest.mark.parametrize("positions", ["masked", "all"])
def test_running_the_vocabulary_head_on_selected_tokens_gives_the_full_logits_loss(positions):
    """In training the masked-LM student runs its head only where a loss reads it; the loss must equal the one
    computed from the full (tokens x vocabulary) logits, as in evaluation (dropout off so both passes match)."""
    from transformers import BertConfig

    from pipeline.kd import DistillationModule
    from pipeline.layers import LayerPlan

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    cfg = DistillConfig(alpha=0.5, beta=0.5, gamma=1.0, temperature=2.0)
    facet = task_student("masked_lm", MaskedLMConfig(mlm_positions=positions))
    module = DistillationModule(BertForMaskedLM(config), cfg, LayerPlan([(2, 2)], 16), task=facet)
    ids = torch.randint(5, 50, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 5:] = 0
    labels = torch.full((3, 7), IGNORE)
    labels[0, 2], labels[1, 1], labels[2, 6] = 11, 12, 13
    teacher = {
        "teacher_topk_values": torch.randn(3, 7, 4),
        "teacher_topk_indices": torch.randint(0, 50, (3, 7, 4)),
        "teacher_hidden_2": torch.randn(3, 7, 16),
    }
    module.train()
    selected = module(ids, mask, labels, **teacher)
    assert set(selected) == {"loss"}
    module.eval()
    full = module(ids, mask, labels, **teacher)
    assert full["logits"].shape == (3, 7, 50)
    assert selected["loss"].item() == pytest.approx(full["loss"].item(), rel=1e-5)


class _Interrupt(TrainerCallback):
    """A crash (as kill -9 would be) just after the checkpoint at `step` is complete."""

    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def test_masked_lm_teacher_resumes_with_the_same_dynamic_masking(tmp_path, tiny_teacher, tiny_prepared):
    """The collator's masking generator is checkpointed: an interrupted masked-LM fine-tuning resumes to the weights
    of an uninterrupted one (masks drawn after the resume point are the same)."""
    from transformers import AutoTokenizer

    from pipeline.config import TeacherConfig
    from pipeline.models import tokenizer_fingerprint
    from pipeline.teacher import run_teacher

    splits, info = tiny_prepared
    info = dict(info, task="masked_lm", tokenizer_fingerprint=tokenizer_fingerprint(AutoTokenizer.from_pretrained(tiny_teacher)))
    cfg = TeacherConfig(model=str(tiny_teacher), epochs=2, batch_size=16, checkpoint_steps=5)
    _, reference = run_teacher(cfg, splits, info, 0, tmp_path / "reference")
    with pytest.raises(KeyboardInterrupt):
        run_teacher(cfg, splits, info, 0, tmp_path / "teacher", callbacks=[_Interrupt(25)])
    _, resumed = run_teacher(cfg, splits, info, 0, tmp_path / "teacher")
    assert resumed["resumed_from_step"] == 25
    assert resumed["eval_mlm_loss_per_epoch"] == reference["eval_mlm_loss_per_epoch"]
    want = (tmp_path / "reference" / "model.safetensors").read_bytes()
    assert (tmp_path / "teacher" / "model.safetensors").read_bytes() == want


def test_masked_lm_student_resumes_to_identical_weights(tmp_path, mlm_cache):
    from pipeline.distill import distill_seeds

    spec = StudentSpec(num_layers=2, hidden_size=16, num_heads=2, init="random")
    cfg = DistillConfig(epochs=2, batch_size=16, learning_rate=5e-4, checkpoint_steps=4)
    reference = distill_seeds(mlm_cache, tmp_path / "reference", spec, cfg, seeds=[0])["summary"]
    with pytest.raises(KeyboardInterrupt):
        distill_seeds(mlm_cache, tmp_path / "s", spec, cfg, seeds=[0], callbacks=[_Interrupt(8)])
    resumed = distill_seeds(mlm_cache, tmp_path / "s", spec, cfg, seeds=[0])["summary"]
    assert resumed["resumed_from_step"] == 8 and resumed["eval_accuracy_per_epoch"] == reference["eval_accuracy_per_epoch"]
    want = (tmp_path / "reference" / "model.safetensors").read_bytes()
    assert (tmp_path / "s" / "model.safetensors").read_bytes() == want
