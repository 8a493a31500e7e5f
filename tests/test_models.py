"""Student construction: the uniform layer map and teacher-weight init copying exactly the chosen layers."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from pipeline.config import StudentSpec
from pipeline.errors import PipelineError
from pipeline.layers import uniform_layer_map
from pipeline.students import build_student


@pytest.mark.parametrize(
    "m, n, expected", [(3, 6, [2, 4, 6]), (2, 6, [3, 6]), (4, 6, [1, 3, 4, 6]), (6, 6, [1, 2, 3, 4, 5, 6]), (1, 12, [12])]
)
def test_uniform_layer_map(m, n, expected):
    assert uniform_layer_map(m, n) == expected


def _teacher(tiny_teacher):
    return json.loads((tiny_teacher / "config.json").read_text()), load_file(tiny_teacher / "model.safetensors")


@pytest.mark.parametrize("init_layers", [None, [1, 4], [3, 3]])
def test_teacher_init_copies_exactly_the_chosen_layers(tiny_teacher, init_layers):
    config, weights = _teacher(tiny_teacher)
    spec = StudentSpec(num_layers=2, hidden_size=32, init="teacher", init_layers=init_layers)
    student, info = build_student(spec, config, ["negative", "positive"], tiny_teacher / "model.safetensors", seed=0)
    chosen = init_layers or [2, 4]
    assert info["teacher_layers"] == chosen
    state = student.state_dict()
    for s_idx, t_layer in enumerate(chosen):
        for t_idx in range(config["num_hidden_layers"]):
            key = "encoder.layer.{}.attention.self.query.weight"
            same = torch.equal(state["bert." + key.format(s_idx)], weights["bert." + key.format(t_idx)])
            assert same == (t_idx == t_layer - 1), (s_idx, t_idx)
    for key in (
        "bert.embeddings.word_embeddings.weight",
        "bert.embeddings.LayerNorm.weight",
        "bert.pooler.dense.weight",
        "classifier.weight",
    ):
        assert torch.equal(state[key], weights[key]), key
    # every student tensor but position ids came from the teacher
    assert set(info["copied"]) == {k for k in state if "position_ids" not in k}


def test_random_init_copies_nothing_and_is_seeded(tiny_teacher):
    config, weights = _teacher(tiny_teacher)
    spec = StudentSpec(num_layers=2, hidden_size=32, init="random", num_heads=4)
    a, info = build_student(spec, config, ["negative", "positive"], None, seed=1)
    b, _ = build_student(spec, config, ["negative", "positive"], None, seed=1)
    assert "copied" not in info
    assert not torch.equal(
        a.state_dict()["bert.embeddings.word_embeddings.weight"], weights["bert.embeddings.word_embeddings.weight"]
    )
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_teacher_init_refuses_other_widths(tiny_teacher):
    config, _ = _teacher(tiny_teacher)
    spec = StudentSpec(num_layers=2, hidden_size=16, init="teacher", num_heads=4)
    with pytest.raises(PipelineError, match="init 'teacher' needs the teacher's widths .* use init 'random'"):
        build_student(spec, config, ["negative", "positive"], tiny_teacher / "model.safetensors", seed=0)


def test_teacher_init_layer_out_of_range(tiny_teacher):
    config, _ = _teacher(tiny_teacher)
    spec = StudentSpec(num_layers=2, hidden_size=32, init="teacher", init_layers=[1, 5])
    with pytest.raises(PipelineError, match="init layer 5 is out of range; the teacher has layers 1..4"):
        build_student(spec, config, ["negative", "positive"], tiny_teacher / "model.safetensors", seed=0)


def test_teacher_init_without_teacher_weights_names_the_fix(tiny_teacher, tmp_path):
    config, _ = _teacher(tiny_teacher)
    spec = StudentSpec(num_layers=2, hidden_size=32, init="teacher")
    with pytest.raises(PipelineError, match="dvc pull artifacts/teacher"):
        build_student(spec, config, ["negative", "positive"], tmp_path / "model.safetensors", seed=0)


def test_pretrained_init_loads_a_local_bert_checkpoint(tiny_teacher, tmp_path):
    from transformers import BertConfig, BertModel

    config, _ = _teacher(tiny_teacher)
    ckpt = BertModel(
        BertConfig(
            vocab_size=config["vocab_size"],
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=128,
        )
    )
    ckpt.save_pretrained(tmp_path / "ckpt")
    spec = StudentSpec(num_layers=2, hidden_size=16, num_heads=2, init=f"pretrained:{tmp_path / 'ckpt'}")
    student, info = build_student(spec, config, ["negative", "positive"], None, seed=0)
    assert torch.equal(student.bert.encoder.layer[1].output.dense.weight, ckpt.encoder.layer[1].output.dense.weight)
    assert student.config.num_labels == 2 and info["init"].startswith("pretrained:")
    wrong = StudentSpec(num_layers=3, hidden_size=16, num_heads=2, init=f"pretrained:{tmp_path / 'ckpt'}")
    with pytest.raises(PipelineError, match="checkpoint has 2 layers of width 16"):
        build_student(wrong, config, ["negative", "positive"], None, seed=0)
    with pytest.raises(PipelineError, match="found no checkpoint config"):
        build_student(
            StudentSpec(num_layers=2, hidden_size=16, init=f"pretrained:{tmp_path / 'none'}"), config, ["a", "b"], None, 0
        )


def test_pretrained_init_from_a_deeper_checkpoint_copies_the_chosen_layers(tiny_teacher, tmp_path):
    """A teacher assistant: a 2-layer student from layers 1 and 3 of a trained 3-layer classifier (its embeddings,
    pooler and head too); a layer the checkpoint lacks is refused naming the checkpoint."""
    from transformers import BertConfig, BertForSequenceClassification

    config, _ = _teacher(tiny_teacher)
    shape = dict(
        vocab_size=config["vocab_size"],
        max_position_embeddings=config["max_position_embeddings"],
        hidden_size=16,
        num_attention_heads=2,
        intermediate_size=40,
    )
    assistant = BertForSequenceClassification(BertConfig(num_hidden_layers=3, num_labels=2, **shape))
    assistant.save_pretrained(tmp_path / "l3")
    spec = StudentSpec(num_layers=2, hidden_size=16, init=f"pretrained:{tmp_path / 'l3'}")
    student, info = build_student(spec, config, ["negative", "positive"], None, seed=0)
    assert info["checkpoint_layers"] == [1, 3]  # the uniform map of 2 onto 3
    assert student.config.intermediate_size == 40 and student.config.num_attention_heads == 2
    theirs = assistant.state_dict()
    for key, tensor in student.state_dict().items():
        if key.startswith("bert.encoder.layer."):
            idx, rest = key[len("bert.encoder.layer.") :].split(".", 1)
            key = f"bert.encoder.layer.{[0, 2][int(idx)]}.{rest}"
        assert torch.equal(tensor, theirs[key]), key
    chosen = dataclasses.replace(spec, init_layers=[2, 3])
    student, info = build_student(chosen, config, ["negative", "positive"], None, seed=0)
    assert info["checkpoint_layers"] == [2, 3]
    assert torch.equal(
        student.bert.encoder.layer[0].attention.self.query.weight, assistant.bert.encoder.layer[1].attention.self.query.weight
    )
    with pytest.raises(PipelineError, match=r"init layer 4 is out of range; checkpoint .*l3 has layers 1..3"):
        build_student(dataclasses.replace(spec, init_layers=[1, 4]), config, ["negative", "positive"], None, seed=0)
    with pytest.raises(PipelineError, match="checkpoint has 3 layers of width 16; .* num_layers to at most 3"):
        build_student(dataclasses.replace(spec, num_layers=4), config, ["negative", "positive"], None, seed=0)
    unbuilt = dataclasses.replace(spec, init=f"pretrained:{tmp_path / 'artifacts/students/l3'}")
    with pytest.raises(PipelineError, match="found no checkpoint config .*; build it first: dvc repro distill@l3"):
        build_student(unbuilt, config, ["negative", "positive"], None, seed=0)


def test_pretrained_init_reads_a_sharded_checkpoint_and_refuses_pickles_and_lost_shards(tiny_teacher, tmp_path):
    """A deeper checkpoint saved in shards gives the student the same tensors as one saved whole; one with only a
    pickled pytorch_model.bin, or whose index names a shard that is not there, is refused naming the file and fix."""
    import shutil

    from transformers import BertConfig, BertForSequenceClassification

    config, _ = _teacher(tiny_teacher)
    shape = dict(vocab_size=config["vocab_size"], max_position_embeddings=config["max_position_embeddings"])
    assistant = BertForSequenceClassification(
        BertConfig(num_hidden_layers=3, num_labels=2, hidden_size=16, num_attention_heads=2, intermediate_size=40, **shape)
    )
    assistant.save_pretrained(tmp_path / "whole")
    assistant.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    shards = sorted(p.name for p in (tmp_path / "sharded").glob("model-*.safetensors"))
    assert len(shards) > 1 and not (tmp_path / "sharded" / "model.safetensors").exists()
    spec = StudentSpec(num_layers=2, hidden_size=16, init=f"pretrained:{tmp_path / 'whole'}")
    whole, _ = build_student(spec, config, ["negative", "positive"], None, seed=0)
    sharded, info = build_student(
        dataclasses.replace(spec, init=f"pretrained:{tmp_path / 'sharded'}"), config, ["negative", "positive"], None, seed=1
    )
    assert info["checkpoint_layers"] == [1, 3]
    for key, tensor in whole.state_dict().items():  # embeddings, layers 1 and 3, pooler and head alike
        assert torch.equal(tensor, sharded.state_dict()[key]), key

    (tmp_path / "sharded" / shards[-1]).unlink()
    lost = dataclasses.replace(spec, init=f"pretrained:{tmp_path / 'sharded'}")
    with pytest.raises(PipelineError, match=rf"index.json: names shard {shards[-1]}, which is not in .*copy every shard"):
        build_student(lost, config, ["negative", "positive"], None, seed=0)

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(tmp_path / "whole" / "config.json", pickled / "config.json")
    torch.save(assistant.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(PipelineError, match=r"pickled: no model.safetensors .* safe_serialization=True"):
        build_student(dataclasses.replace(spec, init=f"pretrained:{pickled}"), config, ["negative", "positive"], None, 0)


def test_a_max_length_beyond_the_teachers_positions_is_refused_before_prepare(tiny_teacher):
    from transformers import AutoConfig

    from pipeline.models import check_max_length

    config = AutoConfig.from_pretrained(tiny_teacher)
    positions = config.max_position_embeddings
    check_max_length(str(tiny_teacher), positions, config)  # the most it has is fine
    with pytest.raises(PipelineError, match=rf"'data.max_length' is {positions + 1} but .* has {positions} position embeddings"):
        check_max_length(str(tiny_teacher), positions + 1, config)


def test_every_student_that_cannot_take_the_teachers_layers_is_named_in_one_message(tiny_teacher):
    from pipeline.models import check_teacher_init

    config, _ = _teacher(tiny_teacher)
    ok = StudentSpec(num_layers=2, hidden_size=32, init="teacher")
    narrow = StudentSpec(num_layers=2, hidden_size=16, init="teacher")
    heads = StudentSpec(num_layers=2, hidden_size=32, init="teacher", num_heads=2, intermediate_size=32)
    free = StudentSpec(num_layers=2, hidden_size=16, num_heads=2, init="random")
    check_teacher_init({"ok": ok, "free": free}, config)
    with pytest.raises(PipelineError) as err:
        check_teacher_init({"ok": ok, "narrow": narrow, "heads": heads, "free": free}, config)
    message = str(err.value)
    assert "students.narrow: hidden_size 16 (the teacher's is 32)" in message
    assert "students.heads: intermediate_size 32 (the teacher's is 64), num_heads 2 (the teacher's is 4)" in message
    assert "students.free" not in message and "students.ok" not in message


def test_epochs_zero_refuses_a_classifier_checkpoint_without_head_weights(tiny_teacher, tmp_path):
    import shutil

    from safetensors.torch import save_file

    from tests.conftest import load_classifier

    headless = tmp_path / "headless"
    shutil.copytree(tiny_teacher, headless)
    weights = load_file(headless / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("classifier.")}, headless / "model.safetensors")
    with pytest.raises(PipelineError, match=r"headless: teacher.epochs is 0 but the checkpoint lacks .*classifier.bias, "):
        load_classifier(str(headless), label_names=["negative", "positive"], require_head=True)
    model = load_classifier(str(headless), label_names=["negative", "positive"])  # fine-tuning puts a new head on: fine
    assert model.classifier.weight.shape == (2, 32)
    complete = load_classifier(str(tiny_teacher), label_names=["negative", "positive"], require_head=True)
    assert torch.equal(complete.classifier.weight, weights["classifier.weight"])
