"""Bad input a user can give: each case stops with one line naming the file, row or key and the fix (exit 2 from a
stage), costs no unbounded memory, and never yields a silently wrong score."""

import errno
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from pipeline.cli import run_stage
from pipeline.config import DataConfig
from pipeline.distributed import relaunch_under_torchrun
from pipeline.errors import PipelineError
from pipeline.params import params_from_dict
from pipeline.sources import parse_source
from pipeline.tasks.data import task_data
from pipeline.tasks.question_answering.squad import load_questions
from tests.conftest import ROOT, SAMPLES, make_tokenizer

QA, NER = task_data("question_answering"), task_data("token_classification")
CONTEXT = "Paris is the capital of France."


def _squad(path, paragraphs):
    """A SQuAD v1.1 file of one article; `paragraphs` = [(context, [qa, ...]), ...]."""
    doc = {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": c, "qas": q} for c, q in paragraphs]}]}
    path.write_text(json.dumps(doc))
    return path


def _qa(qid=None, question="Where is Paris?", text="France", start=24):
    qa = {"question": question, "answers": [{"text": text, "answer_start": start}]}
    if qid is not None:
        qa["id"] = qid
    return qa


def test_a_repeated_question_id_is_refused_naming_both_places(tmp_path):
    path = _squad(tmp_path / "train.json", [(CONTEXT, [_qa("q1")]), (CONTEXT, [_qa("q2"), _qa("q1")])])
    with pytest.raises(PipelineError) as err:
        load_questions(parse_source(str(path)))
    message = str(err.value)
    assert "paragraph 1, question id q1: question id 'q1' is used twice (first at" in message
    assert "paragraph 0, question id q1)" in message and "\n" not in message


def test_questions_without_ids_get_unique_stable_ids(tmp_path):
    path = _squad(tmp_path / "train.json", [(CONTEXT, [_qa(), _qa(question="What is Paris?")]), (CONTEXT, [_qa()])])
    ids = [q.id for q in load_questions(parse_source(str(path)))]
    assert ids == ["article 0 paragraph 0 question 0", "article 0 paragraph 0 question 1", "article 0 paragraph 1 question 0"]
    assert ids == [q.id for q in load_questions(parse_source(str(path)))]  # stable: the same file, the same ids


@pytest.mark.parametrize(
    "qa, message",
    [
        (_qa("q1", start="24"), r"question id q1: answer_start '24' must be an integer .* not str; write it without quotes"),
        (_qa("q1", text=""), r"question id q1: an answer text is empty"),
        (_qa("q1", start=3), r"question id q1: answer_start 3 does not index the answer 'France'"),
    ],
)
def test_bad_answers_are_named_by_what_is_wrong(tmp_path, qa, message):
    from pipeline.tasks.question_answering.squad import check_question

    (q,) = load_questions(parse_source(str(_squad(tmp_path / "train.json", [(CONTEXT, [qa])]))))
    with pytest.raises(PipelineError, match=message):
        check_question(q, labeled=True)


def test_a_json_file_that_is_not_squad_names_the_columns_it_lacks_not_a_params_key(tmp_path):
    (tmp_path / "train.json").write_text(json.dumps([{"text": "a", "label": 1}]))
    with pytest.raises(PipelineError) as err:
        load_questions(parse_source(str(tmp_path / "train.json")))
    message = str(err.value)
    assert "neither SQuAD v1.1 JSON" in message and "missing: id, context, question, answers" in message
    assert "set params" not in message


def test_a_huge_context_is_refused_before_tokenizing_with_little_memory(tmp_path):
    """A 3.5 MB paragraph: `prepare` stops with one line naming the question and question_answering.max_context_chars, exit 2, and
    its peak RSS stays far below what windowing such a context costs."""
    huge = ("Paris is the capital of France. " * 110_000)[:3_500_000]
    _squad(tmp_path / "train.json", [(huge, [_qa("big")]), (CONTEXT, [_qa("q2")])])
    _squad(tmp_path / "dev.json", [(CONTEXT, [_qa("d1")])])
    params = yaml.safe_load((ROOT / "params/squad.yaml").read_text())
    params["data"].update(train=str(tmp_path / "train.json"), dev=str(tmp_path / "dev.json"), transfer=None, val_examples=0)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    # the stage runs under a small parent that reports its child's peak RSS (this worker's own children may be larger)
    measure = (
        "import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            measure,
            sys.executable,
            str(ROOT / "stages/prepare.py"),
            "--params",
            str(tmp_path / "params.yaml"),
        ]
        + ["--out", str(tmp_path / "prepared"), "--transfer-out", str(tmp_path / "transfer")],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    peak_mb = int(proc.stdout.strip().splitlines()[-1]) / 1024
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().count("\n") == 0
    assert (
        "question id big: the context is 3,500,000 characters, over question_answering.max_context_chars (100,000)" in proc.stderr
    )
    assert peak_mb < 2048, f"peak RSS {peak_mb:.0f} MB"


def test_an_unknown_conll_tag_names_its_own_line_not_the_sentence_start(tmp_path):
    lines = ["EU NNP B-ORG", "rejects VBZ O", "German JJ B-MISC", "call NN O", "to TO O", "boycott VB O", "Britsh JJ B-MSC"]
    (tmp_path / "train.txt").write_text("-DOCSTART- -X- O\n\n" + "\n".join(lines) + "\n")
    (tmp_path / "dev.txt").write_text((SAMPLES / "conll2003/dev.txt").read_text())
    data = DataConfig(train=str(tmp_path / "train.txt"), dev=str(tmp_path / "dev.txt"), label_names=None, transfer=None)
    tokenizer = make_tokenizer(tmp_path / "tok", ROOT / "data/raw/sst2")
    data.label_names = ["O", "B-ORG", "I-ORG", "B-MISC", "I-MISC", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    with pytest.raises(PipelineError, match=r"train.txt, line 9 \(word 7 'Britsh'\): tag 'B-MSC' is not one of"):
        NER.prepare(data, tokenizer, seed=0)


def test_sentence_data_under_token_classification_is_one_line_not_a_type_error(tmp_path):
    tokenizer = make_tokenizer(tmp_path / "tok", ROOT / "data/raw/sst2")
    sst2 = ROOT / "data/raw/sst2"
    data = DataConfig(train=str(sst2 / "dev.tsv"), dev=str(sst2 / "dev.tsv"), label_names=None, transfer=None, val_examples=0)
    with pytest.raises(PipelineError, match=r"dev.tsv: column 'sentence' \(data.text_column\) holds single values"):
        NER.prepare(data, tokenizer, seed=0)


def test_an_ensemble_naming_a_member_twice_is_refused():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["ensembles"] = {"twice": {"members": ["l3", "l3"]}}
    with pytest.raises(PipelineError, match=r"'ensembles.twice.members' names l3 more than once"):
        params_from_dict(raw)


def test_more_processes_than_the_machine_has_are_refused_with_the_key():
    with pytest.raises(PipelineError, match=r"'extract.nproc' is 100000 but this machine has .*; set it to at most"):
        relaunch_under_torchrun(100_000, ["stages/extract.py"], key="extract.nproc")


def test_a_shard_replaced_by_a_device_is_not_called_missing(tiny_cache, tmp_path):
    import shutil

    from pipeline.cache import TeacherCache

    cache = tmp_path / "cache"
    shutil.copytree(tiny_cache, cache)
    shard = sorted(cache.glob("*.arrow"))[0]
    shard.unlink()
    shard.symlink_to("/dev/zero")
    with pytest.raises(PipelineError, match=r"shard listed in the manifest is not a regular file \(a device"):
        TeacherCache(cache, verify="lazy")


def test_an_unwritable_folder_is_one_line_and_exit_2(capsys, tmp_path):
    def main(params, args):
        raise PermissionError(errno.EROFS, "Read-only file system", "artifacts/cache/.work")

    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    with pytest.raises(SystemExit) as stop:
        run_stage(main, argv=["--params", str(tmp_path / "params.yaml")])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: artifacts/cache/.work: Read-only file system; make the folder writable for this user and rerun"


def _checkpoint(work, step, files):
    from pipeline.checkpoints import COMPLETE, KEY_FILE

    (work / KEY_FILE).write_text(json.dumps({"key": "k"}))
    ckpt = work / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    for name, obj in files.items():
        torch.save(obj, ckpt / name)
    (ckpt / COMPLETE).write_text(json.dumps({"step": step, "max_steps": 10}))
    return ckpt


class _Payload:
    """Unpickling this leaves a marker file: proof that a pickle was loaded."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_resume_checkpoint_holding_a_pickle_is_set_aside_and_training_restarts(tmp_path, caplog):
    from pipeline.checkpoints import Checkpoints

    work, marker = tmp_path / "work", tmp_path / "pwned"
    work.mkdir()
    bad = _checkpoint(work, 4, {"optimizer.pt": {"state": _Payload(marker)}, "rng_state.pth": {"a": torch.zeros(2)}})
    checkpoints = Checkpoints(work, "k", every=2, name="distill l3")
    assert checkpoints.latest() is None  # nothing good to resume: training starts afresh instead of failing every rerun
    assert not marker.exists() and not bad.exists() and (work / "damaged-checkpoint-4").is_dir()
    assert "distill l3: " in caplog.text and "cannot be resumed (optimizer.pt: UnpicklingError); set aside" in caplog.text
    good = _checkpoint(work, 6, {"optimizer.pt": {"state": torch.ones(3)}})
    assert Checkpoints(work, "k", every=2).latest() == str(good)  # a good one resumes as before
