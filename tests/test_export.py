"""The export stage: ONNX fp32 equal to PyTorch, ONNX int8 scored through the same metric code, the report reading
every runtime, and one-line errors for a missing model, an unsupported opset and an unwritable folder."""

import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from pipeline.config import ExportConfig
from pipeline.errors import PipelineError
from pipeline.evaluation import compare_to_teacher, evaluate_saved_model
from pipeline.exporting import export_model
from pipeline.onnx_models import PIPELINE_TASKS, RUNTIMES, SUMMARY, load_exported, onnx_pipeline
from pipeline.params import params_from_dict
from pipeline.tasks.question_answering.serve import QuestionAnswerer
from tests.conftest import ROOT, make_tokenizer, sst2_rows, tiny_bert_config

HEADS = {
    "BertForSequenceClassification": {"num_labels": 3},
    "BertForTokenClassification": {"num_labels": 5},
    "BertForQuestionAnswering": {},
    "BertForMaskedLM": {},
}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory, sst2_small):
    return make_tokenizer(tmp_path_factory.mktemp("tok"), sst2_small)


def _saved(tmp_path, tokenizer, arch: str, **config):
    """A random tiny model of the head; `initializer_range` 0.3 gives it activations of a trained model's size."""
    torch.manual_seed(0)
    model = getattr(transformers, arch)(tiny_bert_config(len(tokenizer), architectures=[arch], **HEADS[arch], **config))
    model.eval()
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    return model, tmp_path / "model"


@pytest.mark.parametrize("arch", list(HEADS))
def test_an_exported_model_answers_as_pytorch_does(tmp_path, tokenizer, arch, monkeypatch):
    """fp32 ONNX equals PyTorch on real padded sentences of shapes other than the export's; int8 loads and answers
    with the same outputs' shapes; the export dir holds what serving needs and nothing is left in the working dir."""
    model, saved = _saved(tmp_path, tokenizer, arch)
    monkeypatch.chdir(tmp_path)  # relative paths, as the stage passes them
    summary = export_model(saved.relative_to(tmp_path), Path("export"), ExportConfig())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "model"]
    assert summary["onnx_max_abs_diff"] < 1e-4 and summary["onnx_int8_max_abs_diff"] >= 0
    assert {"config.json", "tokenizer.json", SUMMARY, *RUNTIMES.values()} <= {p.name for p in (tmp_path / "export").iterdir()}
    assert json.loads((tmp_path / "export" / SUMMARY).read_text())["size_mb"]["onnx_int8"] > 0
    for batch in (1, 5):
        enc = tokenizer(sst2_rows("dev", batch), padding=True, return_tensors="pt")
        enc["token_type_ids"] = torch.zeros_like(enc["input_ids"])
        with torch.no_grad():
            ref = model(**enc)
        fp32, int8 = load_exported(tmp_path / "export", "onnx"), load_exported(tmp_path / "export", "onnx_int8")
        mask = enc["attention_mask"].bool()
        for name in fp32.outputs:
            want, got, quantized = getattr(ref, name), getattr(fp32(**enc), name), getattr(int8(**enc), name)
            assert got.shape == want.shape == quantized.shape
            if want.dim() >= 2 and want.shape[:2] == mask.shape:
                want, got = want[mask], got[mask]
            assert torch.allclose(got, want, atol=1e-4), float((got - want).abs().max())
            assert torch.isfinite(quantized).all()
    # served as shipped, from the ONNX file, answering as the PyTorch model does: transformers' pipeline for the task
    # (QuestionAnswerer for extractive QA, which transformers 5 has no pipeline for)
    text = sst2_rows("dev", 1)[0]
    if "Question" in arch:
        served = QuestionAnswerer(tmp_path / "export", max_length=64, doc_stride=16, runtime="onnx")("what is it ?", text)
        reference = QuestionAnswerer(saved, max_length=64, doc_stride=16)("what is it ?", text)
        assert served["answer"] == reference["answer"] and served["score"] == pytest.approx(reference["score"], abs=1e-3)
        assert QuestionAnswerer(tmp_path / "export", max_length=64, doc_stride=16, runtime="onnx_int8")("what?", text)
        return
    if "MaskedLM" in arch:
        text = " ".join(text.split()[:3] + [tokenizer.mask_token] + text.split()[4:])
    served = onnx_pipeline(tmp_path / "export", "onnx")(text)
    reference = transformers.pipeline(PIPELINE_TASKS["For" + arch.split("For")[1]], model=str(saved))(text)
    strip = lambda out: [{k: v for k, v in d.items() if k != "score"} for d in (out if isinstance(out, list) else [out])]  # noqa: E731
    assert strip(served) == strip(reference)
    assert onnx_pipeline(tmp_path / "export")(text) is not None  # int8


def test_evaluate_scores_each_runtime_with_the_same_metric_code(tmp_path, tiny_teacher, tiny_cache):
    export_model(tiny_teacher, tmp_path / "export", ExportConfig())
    kwargs = dict(batch_size=32, latency_batch_sizes=[1, 4], latency_repeats=2)
    scores = evaluate_saved_model(tiny_teacher, tiny_cache, export_dir=tmp_path / "export", **kwargs)
    assert scores["onnx.accuracy"] == scores["accuracy"]  # fp32 ONNX: the same predictions on every dev row
    assert {k: v for k, v in scores.items() if k.startswith("onnx.") and "latency" not in k and "speedup" not in k} == {
        f"onnx.{k}": v for k in ("accuracy", "f1") for v in [scores[k]]
    } | {"onnx.size_mb": scores["onnx.size_mb"]}
    assert 0 <= scores["onnx_int8.accuracy"] <= 1 and "onnx_int8.f1" in scores
    for runtime in ("onnx", "onnx_int8"):  # the teacher's exports: speedups over the PyTorch teacher itself
        for b in (1, 4):
            ms = scores[f"{runtime}.latency_ms_b{b}"]
            assert ms > 0 and scores[f"{runtime}.speedup_b{b}"] == pytest.approx(scores[f"latency_ms_b{b}"] / ms, rel=0.01)
        assert scores[f"{runtime}.size_mb"] > 0
    assert scores["onnx_int8.size_mb"] < scores["onnx.size_mb"]
    vs = compare_to_teacher(scores, scores)
    assert vs["onnx.retention"] == 1.0 and vs["onnx_int8.retention"] == round(
        scores["onnx_int8.accuracy"] / scores["accuracy"], 4
    )
    with pytest.raises(PipelineError, match="no exported model"):
        evaluate_saved_model(tiny_teacher, tiny_cache, export_dir=tmp_path / "nothing", **kwargs)


def test_export_of_a_missing_model_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "stages/export.py", "--model", str(tmp_path / "students" / "l9"), "--out", str(tmp_path / "x")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().count("\n") == 0
    assert "l9: no saved model (config.json missing); run the stage that trains it first" in proc.stderr


def test_an_unsupported_opset_and_an_unwritable_folder_are_named(tmp_path, tokenizer, monkeypatch):
    students = {"students": {"s": {"num_layers": 1, "hidden_size": 8}}}
    with pytest.raises(PipelineError, match=r"'export.opset' must be >= 17 and < 24, got 12"):
        params_from_dict({"export": {"opset": 12}, **students})
    with pytest.raises(PipelineError, match=r"'export.quantize' must be one of"):
        params_from_dict({"export": {"quantize": "static"}, **students})
    _, saved = _saved(tmp_path, tokenizer, "BertForSequenceClassification")

    def read_only(model, path, cfg):  # noqa: ARG001
        raise PermissionError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr("pipeline.exporting._export_fp32", read_only)
    with pytest.raises(PipelineError, match=r"Read-only file system; make the folder writable for this user and rerun"):
        export_model(saved, tmp_path / "exports" / "s", ExportConfig())
    assert not (tmp_path / "exports" / "s").exists()  # nothing half-written is left as an export


def test_the_dynamo_exporter_without_fusion_matches_too(tmp_path, tokenizer):
    """export.exporter: dynamo (torch.export-based), export.optimize: false — the other road to the same answers."""
    model, saved = _saved(tmp_path, tokenizer, "BertForTokenClassification")
    summary = export_model(saved, tmp_path / "export", ExportConfig(exporter="dynamo", optimize=False, per_channel=True))
    assert summary["onnx_max_abs_diff"] < 1e-4 and summary["exporter"] == "dynamo" and summary["per_channel"] is True
    enc = tokenizer(sst2_rows("dev", 3), padding=True, return_tensors="pt")
    with torch.no_grad():
        want = model(**enc).logits[enc["attention_mask"].bool()]
    got = load_exported(tmp_path / "export", "onnx")(**enc).logits[enc["attention_mask"].bool()]
    assert torch.allclose(got, want, atol=1e-4)


def test_fake_int8_computes_what_the_int8_export_computes(tmp_path, tokenizer):
    """A student under `fake_int8` answers as its ONNX int8 export does (far closer than the float model does), and
    stripping it leaves the float checkpoint, unchanged, to save."""
    from pipeline.qat import fake_int8, strip_fake_int8

    model, saved = _saved(tmp_path, tokenizer, "BertForSequenceClassification", initializer_range=0.3)
    export_model(saved, tmp_path / "export", ExportConfig())
    enc = tokenizer(sst2_rows("dev", 16), padding=True, return_tensors="pt")
    int8 = load_exported(tmp_path / "export", "onnx_int8")(**enc).logits
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        plain = model(**enc).logits
        assert fake_int8(model) == sum(isinstance(m, (torch.nn.Linear, torch.nn.Embedding)) for m in model.modules())
        emulated = model(**enc).logits
    assert (emulated - int8).abs().max() < 1e-3 * plain.abs().max() < (plain - int8).abs().max()
    strip_fake_int8(model)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    with torch.no_grad():
        assert torch.equal(model(**enc).logits, plain)


def test_a_quantization_aware_student_trains_and_saves_a_plain_checkpoint(tmp_path, tiny_cache):
    from pipeline.config import DistillConfig, StudentSpec
    from pipeline.distill import distill_student

    cfg = DistillConfig(epochs=1, batch_size=32, quantization_aware=True, logging_steps=2)
    result = distill_student(tiny_cache, tmp_path / "s", StudentSpec(2, 16, num_heads=2), cfg, seed=0)
    assert result["summary"]["eval_accuracy_per_epoch"]
    from safetensors import safe_open

    with safe_open(tmp_path / "s" / "model.safetensors", "pt") as f:
        assert not any("parametrizations" in k for k in f.keys())
    summary = export_model(tmp_path / "s", tmp_path / "export", ExportConfig())
    assert summary["onnx_max_abs_diff"] < 1e-4
