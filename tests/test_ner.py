"""Token classification (NER): CoNLL reading and its errors, sub-word label alignment, entity scoring against seqeval,
the per-token loss by hand, and a tiny teacher -> cache -> student -> evaluate run on real CoNLL-2003 sentences."""

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertForTokenClassification, BertTokenizerFast

from pipeline.cache import TeacherCache
from pipeline.config import DataConfig, DistillConfig, ExtractConfig, StudentSpec
from pipeline.distill import distill_seeds
from pipeline.errors import PipelineError
from pipeline.evaluation import evaluate_saved_model
from pipeline.extract import extract_cache
from pipeline.losses import LossMix
from pipeline.tasks.data import task_data
from pipeline.tasks.heads import head_of
from pipeline.tasks.student import task_student
from pipeline.tasks.token_classification import IGNORE, TOKEN_LABELS, TOKEN_LOGITS, TokenClassificationConfig
from pipeline.tasks.token_classification.conll import read_conll
from pipeline.tasks.token_classification.data import align_labels
from pipeline.tasks.token_classification.metrics import entities, entity_metrics
from tests.conftest import ROOT, SAMPLES, make_tokenizer, tiny_bert_config

CONLL = SAMPLES / "conll2003"  # hand-made CoNLL-format sentences (tests/data/README.md)
TAGS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
TASK = task_data("token_classification")  # the prepare stage's facet
HEAD = head_of("token_classification")


def _conll_head(split: str, sentences: int) -> str:
    """The first `sentences` sentences of the shipped CoNLL-format sample."""
    text = (CONLL / f"{split}.txt").read_text(encoding="utf-8")
    return "\n\n".join(text.strip().split("\n\n")[:sentences]) + "\n"


@pytest.fixture(scope="module")
def conll_small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("conll")
    (out / "train.txt").write_text(_conll_head("train", 240))
    (out / "dev.txt").write_text(_conll_head("dev", 60))
    return out


def _data(root: Path, **overrides) -> DataConfig:
    settings = {
        "train": str(root / "train.txt"),
        "dev": str(root / "dev.txt"),
        "label_names": TAGS,
        "max_train_examples": None,
        "max_length": 32,
        "transfer": None,
        "val_examples": 0,
    }
    return DataConfig(**{**settings, **overrides})


# ---- reading and its errors ----------------------------------------------------------------------------------------
def test_conll_files_of_two_three_and_four_columns_read_alike(tmp_path):
    four = "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\nPeter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER\n"
    (tmp_path / "four.txt").write_text(four)
    (tmp_path / "two.txt").write_text("\n".join(" ".join(line.split()[::3]) for line in four.splitlines()) + "\n")
    for name in ("four.txt", "two.txt"):
        sentences = read_conll(tmp_path / name)
        assert [(w, t) for w, t, _ in sentences] == [
            (["EU", "rejects"], ["B-ORG", "O"]),
            (["Peter", "Blackburn"], ["B-PER", "I-PER"]),
        ]
        assert [line for _, _, line in sentences] == [3, 6]


@pytest.mark.parametrize(
    "text, message",
    [
        ("EU NNP B-ORG\nrejects VBZ\n", r"train.txt, line 2: 2 columns where the file's lines have 3"),
        ("EU NNP B-ORG\n\nPeter NNP B-PERSON\n", r"train.txt, line 3 \(word 1 'Peter'\): tag 'B-PERSON' is not one of"),
        (
            "EU NNP O\nrejects VBZ I-ORG\n",
            r"train.txt, line 2 \(word 2 'rejects'\): 'I-ORG' follows 'O', which is not valid IOB2",
        ),
        ("Peter NNP B-PER\nGermany NNP I-LOC\n", r"'I-LOC' follows 'B-PER', which is not valid IOB2"),
        ("EU\n", r"train.txt, line 1: one column"),
        ("\n\n", r"train.txt: no sentences"),
    ],
)
def test_bad_conll_files_name_the_file_and_line(tmp_path, conll_small, text, message):
    (tmp_path / "train.txt").write_text(text)
    shutil.copy(conll_small / "dev.txt", tmp_path / "dev.txt")
    tokenizer = _tokenizer(tmp_path)
    with pytest.raises(PipelineError, match=message):
        TASK.prepare(_data(tmp_path), tokenizer, seed=0)


def _tokenizer(root: Path) -> BertTokenizerFast:
    sst = ROOT / "data" / "raw" / "sst2"
    return make_tokenizer(root / "tok", sst)


# ---- label alignment -----------------------------------------------------------------------------------------------
def test_first_sub_word_labelling_and_label_all_tokens():
    # [CLS] Johanson(Johan ##son) lives in Berlin(Ber ##lin) [SEP]
    word_ids = [None, 0, 0, 1, 2, 3, 3, None]
    labels = [TAGS.index(t) for t in ("B-PER", "O", "O", "B-LOC")]
    b_to_i = {1: 2, 3: 4, 5: 6, 7: 8}
    assert align_labels(word_ids, labels, False, b_to_i) == [IGNORE, 1, IGNORE, 0, 0, 5, IGNORE, IGNORE]
    assert align_labels(word_ids, labels, True, b_to_i) == [IGNORE, 1, 2, 0, 0, 5, 6, IGNORE]


def test_prepared_rows_carry_aligned_labels_and_count_truncation(conll_small, caplog):
    tokenizer = _tokenizer(conll_small)
    splits, info = TASK.prepare(_data(conll_small, max_length=12), tokenizer, seed=0)
    row = splits["train"][0]
    enc = tokenizer(read_conll(conll_small / "train.txt")[0][0], is_split_into_words=True, truncation=True, max_length=12)
    assert row["input_ids"] == enc["input_ids"] and len(row[TOKEN_LABELS]) == row["length"]
    firsts = [i for i, w in enumerate(enc.word_ids()) if w is not None and (i == 0 or enc.word_ids()[i - 1] != w)]
    assert [i for i, y in enumerate(row[TOKEN_LABELS]) if y != IGNORE] == firsts
    assert info["splits"]["train"]["truncated"] > 0 and "were truncated" in caplog.text
    assert info["label_names"] == TAGS and info["task"] == "token_classification"


# ---- scoring -------------------------------------------------------------------------------------------------------
def test_entity_scores_agree_with_seqeval_strict_iob2_on_boundary_errors():
    seqeval = pytest.importorskip("seqeval.metrics")
    from seqeval.scheme import IOB2

    true = [
        ["B-PER", "I-PER", "O", "B-LOC", "O", "B-ORG", "I-ORG", "I-ORG"],
        ["B-MISC", "O", "B-PER", "B-PER", "I-PER", "O"],
        ["O", "B-LOC", "I-LOC", "O", "B-ORG"],
    ]
    pred = [
        ["B-PER", "O", "O", "B-LOC", "O", "B-ORG", "I-ORG", "I-ORG"],  # PER cut short; LOC and ORG right
        ["I-MISC", "O", "B-PER", "I-PER", "I-PER", "O"],  # an I- without B-; two PERs merged into one
        ["O", "B-LOC", "I-LOC", "I-LOC", "B-MISC"],  # LOC too long; wrong type
    ]
    ours = entity_metrics(true, pred)
    kwargs = {"mode": "strict", "scheme": IOB2}
    assert math.isclose(ours["f1"], seqeval.f1_score(true, pred, **kwargs))
    assert math.isclose(ours["precision"], seqeval.precision_score(true, pred, **kwargs))
    assert math.isclose(ours["recall"], seqeval.recall_score(true, pred, **kwargs))
    report = seqeval.classification_report(true, pred, output_dict=True, **kwargs)
    for kind in ("PER", "LOC", "ORG", "MISC"):
        assert math.isclose(ours[f"f1_{kind}"], report[kind]["f1-score"]), kind
    assert ours["precision"] == 2 / 6 and ours["recall"] == 2 / 8  # by hand: 8 true, 6 predicted, LOC and ORG of row 1 hit
    assert entities(["I-PER", "I-PER", "B-PER"]) == {("PER", 2, 2)}


# ---- the per-token loss by hand ------------------------------------------------------------------------------------
@pytest.mark.parametrize("positions", ["all", "labeled"])
def test_per_token_loss_by_hand(positions):
    student = torch.tensor([[[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [1.0, -1.0, 0.0], [9.0, 9.0, 9.0]]])
    teacher = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0], [5.0, 0.0, 0.0]]])
    labels = torch.tensor([[0, IGNORE, 2, IGNORE]])
    mask = torch.tensor([[1, 1, 1, 0]])  # the last token is padding: never counted
    mix = LossMix(alpha=0.3, beta=0.7, gamma=0.0, temperature=2.0)
    facet = task_student("token_classification", TokenClassificationConfig(token_positions=positions))

    class Out:
        logits = student

    total, parts = facet.loss(None, Out, labels, {"teacher_logits": teacher}, [], mask, mix, True)

    def log_softmax(x: list[float]) -> list[float]:
        norm = math.log(sum(math.exp(v) for v in x))
        return [v - norm for v in x]

    ce = -(log_softmax([2.0, 0.0, -1.0])[0] + log_softmax([1.0, -1.0, 0.0])[2]) / 2
    kept = [0, 1, 2] if positions == "all" else [0, 2]
    kl = 0.0
    for t in kept:
        p = [math.exp(v) for v in log_softmax([x / 2 for x in teacher[0, t].tolist()])]
        q = log_softmax([x / 2 for x in student[0, t].tolist()])
        kl += sum(pi * (math.log(pi) - qi) for pi, qi in zip(p, q))
    kl = 4 * kl / len(kept)
    assert math.isclose(parts["ce"].item(), ce, rel_tol=1e-5) and math.isclose(parts["kl"].item(), kl, rel_tol=1e-5)
    assert math.isclose(total.item(), 0.3 * ce + 0.7 * kl, rel_tol=1e-5)


# ---- teacher -> cache -> student -> evaluate -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def ner_run(tmp_path_factory, conll_small):
    root = tmp_path_factory.mktemp("ner")
    tokenizer = _tokenizer(root)
    torch.manual_seed(0)
    config = tiny_bert_config(len(tokenizer), **HEAD.head_config(TAGS))
    teacher = root / "teacher"
    BertForTokenClassification(config).save_pretrained(teacher)
    tokenizer.save_pretrained(teacher)
    splits, info = TASK.prepare(_data(conll_small, transfer=str(conll_small / "train.txt"), max_train_examples=160), tokenizer, 0)
    cache = root / "cache"
    extract_cache(
        teacher, splits, cache, ExtractConfig(layers=[2, 4], dtype="float16", rank=None, batch_size=16, device="cpu"), info=info
    )
    return root, teacher, cache, splits


def test_the_cache_holds_per_token_logits_and_labels(ner_run):
    _, teacher, cache, splits = ner_run
    opened = TeacherCache(cache, verify="full")
    assert opened.manifest["task"] == "token_classification" and set(opened.splits) == {"train", "dev", "transfer"}
    fields = {f["name"]: f for f in opened.manifest["fields"]}
    assert fields[TOKEN_LOGITS]["kind"] == "token" and fields[TOKEN_LOGITS]["dtype"] == "float16"
    row = opened.split("dev", [TOKEN_LABELS, TOKEN_LOGITS])[0]
    prepared = next(r for r in splits["dev"] if r["example_id"] == row["example_id"])
    assert list(row[TOKEN_LABELS][:, 0]) == prepared[TOKEN_LABELS]
    model = BertForTokenClassification.from_pretrained(teacher).eval()
    with torch.no_grad():
        want = model(input_ids=torch.tensor([prepared["input_ids"]])).logits[0].numpy()
    np.testing.assert_allclose(row[TOKEN_LOGITS].astype(np.float32), want, atol=2e-3)
    transfer = opened.split("transfer", [TOKEN_LABELS])
    assert all((transfer[i][TOKEN_LABELS] == IGNORE).all() for i in range(len(transfer)))


def test_a_student_learns_from_the_token_cache_and_serves_in_a_pipeline(ner_run):
    from transformers import pipeline

    root, teacher, cache, _ = ner_run
    spec = StudentSpec(num_layers=2, hidden_size=32, init="teacher")
    cfg = DistillConfig(epochs=2, batch_size=16, learning_rate=1e-3)
    result = distill_seeds(cache, root / "student", spec, cfg, seeds=[0], teacher_dir=teacher)
    assert result["summary"]["task"] == "token_classification" and result["summary"]["transfer_rows"] > 0
    metrics = evaluate_saved_model(root / "student", cache, batch_size=16, latency_batch_sizes=[], latency_repeats=1)
    assert {"f1", "precision", "recall", "accuracy", "entities"} <= set(metrics) and metrics["entities"] > 50
    teacher_metrics = evaluate_saved_model(teacher, cache, batch_size=16, latency_batch_sizes=[], latency_repeats=1)
    assert 0 <= teacher_metrics["f1"] <= 1
    tagger = pipeline("token-classification", model=str(root / "student"), aggregation_strategy="simple")
    assert isinstance(tagger("Peter Blackburn visited Germany"), list)
    saved = BertForTokenClassification.from_pretrained(root / "student").config
    assert [saved.id2label[i] for i in range(len(TAGS))] == TAGS


def test_the_report_ranks_token_models_by_entity_f1(ner_run, tmp_path):
    import json

    from pipeline.evaluation import compare_to_teacher
    from pipeline.report import render_report

    root, teacher, cache, _ = ner_run
    spec = StudentSpec(num_layers=1, hidden_size=32, init="teacher")
    distill_seeds(cache, tmp_path / "s", spec, DistillConfig(epochs=1, batch_size=16), seeds=[0, 1], teacher_dir=teacher)
    kwargs = {"batch_size": 16, "latency_batch_sizes": [32], "latency_repeats": 2}
    t = evaluate_saved_model(teacher, cache, **kwargs)
    s = evaluate_saved_model(tmp_path / "s", cache, against_teacher_shape=True, **kwargs)
    s.update(compare_to_teacher(s, t))
    assert t["headline"] == "f1" and s["retention"] == round(s["f1"] / t["f1"], 4) and len(s["f1_per_seed"]) == 2
    assert s["retention_mean"] == round(s["f1_mean"] / t["f1"], 4)
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    (metrics / "teacher.json").write_text(json.dumps(t))
    (metrics / "s.json").write_text(json.dumps(s))
    md = render_report(metrics, tmp_path / "plots", tmp_path / "report", {"s": "student"})
    assert "| entity F1 | token acc | retention |" in md and "entity F1 per seed" in md
    assert f"{100 * s['f1_mean']:.2f} ± {100 * s['f1_std']:.2f}" in md


def test_word_and_tag_lists_from_jsonl_and_a_classlabel_split_read_like_conll(tmp_path, conll_small):
    """The hub's conll2003 shape (tokens + ner_tags as ClassLabel ids), and a jsonl file of word and tag lists."""
    import datasets

    from pipeline.sources import parse_source
    from pipeline.tasks.token_classification.conll import load_sentences

    sentences = read_conll(conll_small / "dev.txt")[:20]
    rows = {"tokens": [w for w, _, _ in sentences], "ner_tags": [t for _, t, _ in sentences]}
    datasets.Dataset.from_dict(rows).to_json(tmp_path / "dev.jsonl")
    features = datasets.Features(
        {"tokens": datasets.List(datasets.Value("string")), "ner_tags": datasets.List(datasets.ClassLabel(names=TAGS))}
    )
    ids = {"tokens": rows["tokens"], "ner_tags": [[TAGS.index(t) for t in row] for row in rows["ner_tags"]]}
    datasets.Dataset.from_dict(ids, features=features).to_parquet(tmp_path / "dev.parquet")
    data = _data(conll_small, text_column="tokens", label_column="ner_tags")
    for name in ("dev.jsonl", "dev.parquet"):
        words, tags, where = load_sentences(parse_source(str(tmp_path / name)), data)
        assert (words, tags) == (rows["tokens"], rows["ner_tags"]), name
        assert where[3].endswith("row 3")
    bad = _data(conll_small, text_column="words", label_column="ner_tags")
    with pytest.raises(PipelineError, match=r"dev.jsonl: no column 'words' .* set params 'data.text_column'"):
        load_sentences(parse_source(str(tmp_path / "dev.jsonl")), bad)


def test_a_tuning_split_carved_from_ner_sentences_keeps_its_token_labels(conll_small):
    """data.val_examples on CoNLL: sentences move from train to val with their per-token labels; the manifest's
    fingerprint is the token classifier's."""
    from pipeline.data import add_tuning_split
    from pipeline.tasks.token_classification.data import token_split_fingerprint

    data = _data(conll_small, val_examples=20)
    splits, info = add_tuning_split(*TASK.prepare(data, _tokenizer(conll_small), seed=0), data, 0, TASK.split_fingerprint)
    val, train = splits["val"], splits["train"]
    assert len(val) == 20 and all(len(r[TOKEN_LABELS]) == r["length"] for r in val)
    assert not {tuple(e) for e in val["input_ids"]} & {tuple(e) for e in train["input_ids"]}
    assert info["splits"]["val"]["fingerprint"] == token_split_fingerprint(val)
