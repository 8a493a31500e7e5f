"""Checkpoints only through safetensors, no unsafe unpickling, remote code off unless asked for."""

import re
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from pipeline.config import TeacherConfig
from pipeline.errors import PipelineError
from pipeline.models import load_classifier

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "pipeline").rglob("*.py")) + sorted((ROOT / "stages").glob("*.py"))


def test_a_pickled_only_checkpoint_is_refused(tmp_path):
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        architectures=["BertForSequenceClassification"],
    )
    config.save_pretrained(tmp_path)
    torch.save(BertForSequenceClassification(config).state_dict(), tmp_path / "pytorch_model.bin")  # a pickle
    with pytest.raises(PipelineError, match="loads only safetensors checkpoints"):
        load_classifier(str(tmp_path), label_names=["a", "b"])


def test_no_unsafe_torch_load_and_models_load_with_use_safetensors():
    for path in SOURCES:
        text = path.read_text()
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path}: {call}"
        for call in re.findall(r"AutoModel\w*\.from_pretrained\((?:[^()]|\([^()]*\))*\)", text):
            assert "use_safetensors=True" in call, f"{path}: {call}"


def test_trust_remote_code_is_off_by_default_and_reaches_every_loader():
    assert TeacherConfig().trust_remote_code is False
    models = (ROOT / "pipeline" / "models.py").read_text()
    for call in re.findall(r"Auto\w+\.from_pretrained\([^)]*\)", models):
        assert "trust_remote_code=trust_remote_code" in call or "trust_remote_code=False" in call, call
