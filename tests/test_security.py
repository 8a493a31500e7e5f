"""Checkpoints load only through safetensors and no code a checkpoint ships runs unless asked for: tested by handing
every loader a hostile checkpoint and checking that its payload never ran."""

import json
import os

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from pipeline.config import StudentSpec, TeacherConfig
from pipeline.errors import PipelineError
from pipeline.evaluation import evaluate_saved_model
from pipeline.models import load_masked_lm
from pipeline.students import load_pretrained_student
from tests.conftest import load_classifier


class _Payload:
    """Unpickling this runs a shell command that leaves a marker file: proof that a pickle was loaded."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _config(arch="BertForSequenceClassification", **extra):
    return BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        architectures=[arch],
        **extra,
    )


@pytest.fixture
def pickled_checkpoint(tmp_path):
    """A checkpoint dir with a valid config and only a pickled weights file whose unpickling runs the payload."""
    ckpt, marker = tmp_path / "ckpt", tmp_path / "pwned"
    _config().save_pretrained(ckpt)
    state = dict(BertForSequenceClassification(_config()).state_dict())
    state["payload"] = _Payload(marker)
    torch.save(state, ckpt / "pytorch_model.bin")
    return ckpt, marker


LOADERS = {
    "teacher classifier": lambda path: load_classifier(str(path), label_names=["a", "b"]),
    "teacher masked LM": lambda path: load_masked_lm(str(path)),
    "student init pretrained:": lambda path: load_pretrained_student(
        str(path), StudentSpec(num_layers=1, hidden_size=16, num_heads=2), {"vocab_size": 50}, ["a", "b"]
    ),
}


@pytest.mark.parametrize("loader", list(LOADERS))
def test_a_pickled_checkpoint_is_refused_and_never_unpickled(pickled_checkpoint, loader):
    ckpt, marker = pickled_checkpoint
    with pytest.raises(PipelineError, match="loads only safetensors checkpoints"):
        LOADERS[loader](ckpt)
    assert not marker.exists(), f"{loader}: the pickle was loaded (its payload ran)"


def test_evaluate_refuses_a_pickled_model_and_never_unpickles_it(pickled_checkpoint, tiny_cache):
    ckpt, marker = pickled_checkpoint
    with pytest.raises(PipelineError, match="loads only safetensors checkpoints"):
        evaluate_saved_model(ckpt, tiny_cache, batch_size=8, latency_batch_sizes=[], latency_repeats=1)
    assert not marker.exists()


def test_remote_code_in_a_checkpoint_does_not_run_unless_asked_for(tmp_path):
    """A checkpoint whose config points at its own Python module (auto_map) is refused by default; the module is
    never imported."""
    assert TeacherConfig().trust_remote_code is False
    ckpt, marker = tmp_path / "remote", tmp_path / "imported"
    ckpt.mkdir()
    (ckpt / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from transformers import BertConfig, BertForSequenceClassification\n"
        "class EvilConfig(BertConfig):\n    model_type = 'evil'\n"
        "class EvilModel(BertForSequenceClassification):\n    config_class = EvilConfig\n"
    )
    config = _config().to_dict()
    config.update(
        model_type="evil", auto_map={"AutoConfig": "evil.EvilConfig", "AutoModelForSequenceClassification": "evil.EvilModel"}
    )
    (ckpt / "config.json").write_text(json.dumps(config))
    for load in (lambda: load_classifier(str(ckpt), label_names=["a", "b"]), lambda: load_masked_lm(str(ckpt))):
        with pytest.raises(Exception):  # noqa: B017 - transformers' own refusal or ours; what matters is the marker
            load()
        assert not marker.exists(), "the checkpoint's own code was imported without trust_remote_code"
