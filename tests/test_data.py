"""Corpus preparation on real SST-2 rows, and every bad input getting one message naming file, line/row and the fix."""

import numpy as np
import pytest
from transformers import BertTokenizerFast

from pipeline.data import add_augmented_split, add_tuning_split, edit_words, split_fingerprint
from pipeline.errors import PipelineError
from pipeline.sources import parse_source
from pipeline.tasks.sequence_classification.data import prepare_corpus
from tests.conftest import data_config, sst2_rows


@pytest.fixture
def tokenizer(tiny_teacher):
    return BertTokenizerFast.from_pretrained(tiny_teacher)


def _write(tmp_path, train: str, dev: str | None = None, suffix=".tsv"):
    (tmp_path / f"train{suffix}").write_bytes(train.encode() if isinstance(train, str) else train)
    (tmp_path / f"dev{suffix}").write_text(dev if dev is not None else "label\tsentence\n1\tfine\n0\tbad\n")
    return tmp_path


def test_prepares_real_sst2_with_ids_labels_and_fingerprints(sst2_small, tokenizer):
    splits, info = prepare_corpus(data_config(sst2_small), tokenizer, seed=0)
    assert info["label_names"] == ["negative", "positive"]
    assert (len(splits["train"]), len(splits["dev"])) == (300, 80)
    row = splits["train"][1]
    assert row["example_id"] == 1 and row["label"] == 0  # "contains no wit , only labored gags"
    assert row["input_ids"][0] == tokenizer.cls_token_id and row["input_ids"][-1] == tokenizer.sep_token_id
    assert row["length"] == len(row["input_ids"])
    assert len(info["splits"]["train"]["fingerprint"]) == 64


def test_subset_is_seeded_and_sorted_by_id(sst2_small, tokenizer):
    a, info_a = prepare_corpus(data_config(sst2_small, max_train_examples=50), tokenizer, seed=3)
    b, info_b = prepare_corpus(data_config(sst2_small, max_train_examples=50), tokenizer, seed=3)
    c, info_c = prepare_corpus(data_config(sst2_small, max_train_examples=50), tokenizer, seed=4)
    ids = a["train"]["example_id"]
    assert len(ids) == 50 and list(ids) == sorted(ids) and ids == b["train"]["example_id"]
    assert (
        info_a["splits"]["train"]["fingerprint"]
        == info_b["splits"]["train"]["fingerprint"]
        != info_c["splits"]["train"]["fingerprint"]
    )


def test_long_texts_are_truncated_and_counted_not_refused(tmp_path, tokenizer, sst2_small):
    long = " ".join(["the"] * 100)
    _write(tmp_path, f"label\tsentence\n1\t{long}\n0\tbad movie\n")
    splits, info = prepare_corpus(data_config(tmp_path), tokenizer, seed=0)
    assert info["splits"]["train"]["truncated"] == 1
    assert max(splits["train"]["length"]) == 32


def test_labels_inferred_when_label_names_is_null(tmp_path, tokenizer):
    _write(tmp_path, "label\tsentence\npos\tgood\nneg\tbad\npos\tfine\n", "label\tsentence\nneg\tbad\n")
    splits, info = prepare_corpus(data_config(tmp_path, label_names=None), tokenizer, seed=0)
    assert info["label_names"] == ["neg", "pos"]
    assert list(splits["train"]["label"]) == [1, 0, 1]


@pytest.mark.parametrize(
    "train, message",
    [
        ("", r"train.tsv: file is empty"),
        ("label\tsentence\n", r"train.tsv: no data rows"),
        ("label\ttext\n1\tgood\n", r"train.tsv: no column 'sentence' \(have: label, text\); set params 'data.text_column'"),
        ("score\tsentence\n1\tgood\n", r"no column 'label' .* 'data.label_column'"),
        ("label\tsentence\n1\tgood\n0\t   \n", r"train.tsv, line 3: empty text in column 'sentence'"),
        ("label\tsentence\n1\tgood\n0\t\n", r"train.tsv, line 3: empty text"),
        ("label\tsentence\n1\tgood\n0\t\u200b\u200d \ufeff\n", r"train.tsv, line 3: empty text"),  # invisible characters only
        (
            "label\tsentence\n1\tgood\n2\tbad\n",
            r"train.tsv, line 3: label '?2'? in column 'label' is not one of \['negative', 'positive'\]",
        ),
        ("label\tsentence\n1\tgood\nmaybe\tbad\n", r"line 3: label 'maybe'"),
        (b"label\tsentence\n1\tgood\n0\tna\xefve caf\xe9\n", r"train.tsv, line 3: bytes that are not UTF-8 .* iconv"),
    ],
)
def test_bad_train_files_are_refused_with_location_and_fix(tmp_path, tokenizer, train, message):
    _write(tmp_path, train)
    with pytest.raises(PipelineError, match=message):
        prepare_corpus(data_config(tmp_path), tokenizer, seed=0)


@pytest.mark.parametrize(
    "suffix, text, message",
    [
        (".tsv", "label\tsentence\n1\tgood\n0\tbad\textra\t1\n", r"train.tsv, line 3: could not parse .*Expected 2 fields"),
        (".csv", 'label,sentence\n1,good\n0,"unclosed\n', r"train.csv, line 3: could not parse .*EOF inside string"),
        (
            ".jsonl",
            '{"label": 1, "sentence": "good"}\n\n{"label": 0, "sentence": "bad"\n',
            r"train.jsonl, line 3: not valid JSON \(Expecting ',' delimiter, column 31\); each line must be one JSON object",
        ),
        (".json", '[{"label": 1, "sentence": "good"},\n {"label": 0 "sentence": "bad"}]\n', r"train.json, line 2: not valid"),
    ],
)
def test_unparseable_files_name_the_line(tmp_path, tokenizer, suffix, text, message):
    _write(tmp_path, "label\tsentence\n1\tfine\n")
    (tmp_path / f"train{suffix}").write_text(text)
    cfg = data_config(tmp_path)
    cfg.train = str(tmp_path / f"train{suffix}")
    with pytest.raises(PipelineError, match=message) as caught:
        prepare_corpus(cfg, tokenizer, seed=0)
    assert "\n" not in str(caught.value) and str(caught.value).endswith("fix the file")


def test_dev_label_outside_train_labels(tmp_path, tokenizer):
    _write(tmp_path, "label\tsentence\n1\tgood\n0\tbad\n", "label\tsentence\n1\tok\n7\tweird\n")
    with pytest.raises(PipelineError, match=r"dev.tsv, line 3: label '?7'?"):
        prepare_corpus(data_config(tmp_path), tokenizer, seed=0)


def test_missing_file_and_bad_source_spec(tmp_path):
    with pytest.raises(PipelineError, match=r"nope/train.tsv: data file not found; copy it there .* hub id"):
        parse_source("nope/train.tsv")
    with pytest.raises(PipelineError, match="NAME\\[:CONFIG\\]@SPLIT"):
        parse_source("glue")
    src = parse_source("glue:sst2@validation")
    assert (src.hub_name, src.hub_config, src.hub_split) == ("glue", "sst2", "validation")


def test_jsonl_and_parquet_sources(tmp_path, tokenizer):
    import pandas as pd

    rows = pd.DataFrame({"sentence": ["a good film", "a bad film", "fine"], "label": [1, 0, 1]})
    rows.to_json(tmp_path / "train.jsonl", orient="records", lines=True)
    rows.to_parquet(tmp_path / "dev.parquet")
    cfg = data_config(tmp_path)
    cfg.train, cfg.dev = str(tmp_path / "train.jsonl"), str(tmp_path / "dev.parquet")
    splits, _ = prepare_corpus(cfg, tokenizer, seed=0)
    assert list(splits["train"]["label"]) == list(splits["dev"]["label"]) == [1, 0, 1]
    assert np.all(np.array(splits["dev"]["length"]) > 2)


def test_id_column_is_used_and_duplicates_or_non_integers_refused(tmp_path, tokenizer):
    _write(tmp_path, "id\tlabel\tsentence\n10\t1\tgood\n7\t0\tbad\n", "id\tlabel\tsentence\n3\t1\tok\n")
    splits, _ = prepare_corpus(data_config(tmp_path, id_column="id"), tokenizer, seed=0)
    assert list(splits["train"]["example_id"]) == [10, 7]
    _write(tmp_path, "id\tlabel\tsentence\n10\t1\tgood\n11\t0\tbad\n10\t0\tworse\n", "id\tlabel\tsentence\n3\t1\tok\n")
    with pytest.raises(PipelineError, match=r"train.tsv, line 4: duplicate id 10 in column 'id' \(first at line 2\)"):
        prepare_corpus(data_config(tmp_path, id_column="id"), tokenizer, seed=0)
    _write(tmp_path, "id\tlabel\tsentence\nx1\t1\tgood\n", "id\tlabel\tsentence\n3\t1\tok\n")
    with pytest.raises(PipelineError, match=r"line 2: id 'x1' in column 'id' is not an integer"):
        prepare_corpus(data_config(tmp_path, id_column="id"), tokenizer, seed=0)
    with pytest.raises(PipelineError, match=r"no column 'uid' .* 'data.id_column'"):
        prepare_corpus(data_config(tmp_path, id_column="uid"), tokenizer, seed=0)


def _carved(tmp_path, tokenizer, seed=0, n=40, **overrides):
    data = data_config(tmp_path, val_examples=n, **overrides)
    splits, info = prepare_corpus(data, tokenizer, seed=seed)
    return add_tuning_split(splits, info, data, seed)


def test_tuning_split_never_overlaps_dev_or_the_labelled_train_rows(tmp_path, tokenizer):
    """Carved from real SST-2 train rows with planted repeats: a text also in dev is never chosen, a train row that
    repeats a tuning text goes with it, so no tuning text is left in train or dev; the carve is seeded, and the stats
    follow the rows."""
    train = sst2_rows("train", 300)
    dev = sst2_rows("dev", 80)
    planted = [train[5], train[5], "1\t" + dev[3].split("\t", 1)[1]]  # a train row twice more, a dev text in train
    (tmp_path / "train.tsv").write_text("\n".join(train + planted) + "\n")
    (tmp_path / "dev.tsv").write_text("\n".join(dev) + "\n")
    splits, info = _carved(tmp_path, tokenizer, n=120)
    key = lambda ds: [tuple(e) for e in ds["input_ids"]]  # noqa: E731
    val, rest, dv = key(splits["val"]), key(splits["train"]), set(key(splits["dev"]))
    assert len(val) == 120 == len(set(val)) and len(rest) == 303 - info["splits"]["train"]["tuning_rows_removed"]
    assert not set(val) & set(rest) and not set(val) & dv
    assert set(splits["val"]["example_id"]).isdisjoint(splits["train"]["example_id"])
    assert info["splits"]["val"]["rows"] == 120 and info["splits"]["train"]["rows"] == len(rest)
    assert info["splits"]["val"]["fingerprint"] == split_fingerprint(splits["val"])
    assert list(info["splits"]) == ["train", "dev", "val"]
    again, _ = _carved(tmp_path, tokenizer, n=120)
    other, _ = _carved(tmp_path, tokenizer, seed=1, n=120)
    assert again["val"]["example_id"] == splits["val"]["example_id"] != other["val"]["example_id"]
    assert again["train"]["example_id"] == splits["train"]["example_id"]


def _inner(tokenizer, ds) -> list[str]:
    frame = {tokenizer.cls_token_id, tokenizer.sep_token_id}
    return [" " + " ".join(str(t) for t in e if t not in frame) + " " for e in ds["input_ids"]]


def test_tuning_split_takes_whole_sentences_and_their_phrases_leave_train_and_transfer(tmp_path, tokenizer):
    """SST-2 style files hold every phrase of a sentence as its own row. The tuning split takes whole sentences (rows
    no other row contains); a phrase found only inside tuning sentences leaves train and transfer, a phrase also inside
    another sentence stays (as in SST's own split); `max_train_examples` labelled rows are drawn after the carve."""
    sentences = [
        "a gorgeous , witty , seductive movie .",
        "the film is a dull , dumb mess .",
        "the film is funny and touching .",
        "an utterly charming and hilarious film .",
        "a dull , lifeless waste of time .",
        "it is a gorgeous and moving story .",
    ]
    phrases = ["a gorgeous", "witty , seductive movie", "seductive movie", "the film is", "dumb mess", "dull , dumb mess ."]
    phrases += ["funny and touching", "utterly charming", "hilarious film .", "lifeless waste", "waste of time", "moving story"]
    lines = ["label\tsentence"] + [f"{i % 2}\t{t}" for i, t in enumerate(sentences + phrases)]
    (tmp_path / "train.tsv").write_text("\n".join(lines) + "\n")
    (tmp_path / "dev.tsv").write_text("label\tsentence\n1\ta fine film .\n")
    data = data_config(tmp_path, val_examples=2, max_train_examples=6, transfer=str(tmp_path / "train.tsv"))
    for seed in range(6):
        splits, info = prepare_corpus(data, tokenizer, seed=seed)
        val, train, transfer = (_inner(tokenizer, splits[k]) for k in ("val", "train", "transfer"))
        others = [t for t in _inner(tokenizer, prepare_corpus(data_config(tmp_path), tokenizer, 0)[0]["train"]) if t not in val]
        assert len(val) == 2 and all(v.strip() and sum(v in t for t in others) == 0 for v in val)  # whole sentences
        for row in train + transfer:
            assert row not in val and not any(v in row for v in val)
            if any(row in v for v in val):  # a phrase of a tuning sentence stays only as part of another sentence
                assert any(row in t and t not in val and len(t) > len(row) for t in others), row
        left = 18 - info["splits"]["train"]["tuning_rows_removed"]
        assert len(train) + len(transfer) == left and left >= 10
    # the phrase "the film is" lies in two sentences: it stays whenever one of them stays
    few = prepare_corpus(data_config(tmp_path, val_examples=2, max_train_examples=5), tokenizer, seed=0)[0]
    assert len(few["train"]) == 5 and len(few["val"]) == 2


def test_the_sentence_carve_scales_linearly_on_the_real_sst2_train_file(tokenizer):
    """All 67,349 SST-2 train rows: 2,000 whole sentences carved in seconds (token-run hashes, not row pairs), and
    what is left for train holds no phrase that lies only inside them."""
    import time

    from pipeline.tuning import carve_by_sentence
    from tests.conftest import SST2

    texts = [line.split("\t", 1)[1] for line in (SST2 / "train.tsv").read_text().splitlines()[1:]]
    rows = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=64)["input_ids"]
    start = time.perf_counter()
    chosen, pool, links, eligible = carve_by_sentence(rows, set(), 2000, seed=0)
    assert time.perf_counter() - start < 60 and len(chosen) == 2000 and 2000 < eligible < len(rows) // 5
    kept = {" " + " ".join(map(str, rows[i])) + " " for i in np.flatnonzero(pool)}
    sample = [" " + " ".join(map(str, rows[i])) + " " for i in chosen[:50]]
    for v in sample:
        assert v not in kept
    assert not links.mask([rows[i] for i in np.flatnonzero(pool)[:2000]]).any()


def test_transfer_rows_never_include_a_tuning_text(sst2_small, tokenizer):
    """The transfer texts (train file's rows outside the labelled subset) exclude the carved tuning rows too."""
    splits, _ = _carved(sst2_small, tokenizer, max_train_examples=100, transfer=str(sst2_small / "train.tsv"))
    val = {tuple(e) for e in splits["val"]["input_ids"]}
    assert val and not val & {tuple(e) for e in splits["transfer"]["input_ids"]}


def test_too_few_rows_for_the_tuning_split_is_one_clear_error(sst2_small, tokenizer):
    with pytest.raises(PipelineError, match=r"data.val_examples=400 but only \d+ of the 300 rows of .*train.tsv are whole"):
        _carved(sst2_small, tokenizer, n=400)


def test_a_tuning_file_loses_its_rows_that_are_also_in_train_or_dev(tmp_path, tokenizer):
    train, dev = sst2_rows("train", 100), sst2_rows("dev", 20)
    (tmp_path / "train.tsv").write_text("\n".join(train) + "\n")
    (tmp_path / "dev.tsv").write_text("\n".join(dev) + "\n")
    (tmp_path / "val.tsv").write_text("\n".join([train[0]] + train[1:4] + dev[1:3] + sst2_rows("train", 130)[101:]) + "\n")
    data = data_config(tmp_path, val=str(tmp_path / "val.tsv"))
    splits, info = add_tuning_split(*prepare_corpus(data, tokenizer, seed=0), data, 0)
    removed = info["splits"]["val"]["overlap_removed"]
    assert removed >= 5 and len(splits["val"]) == 35 - removed == info["splits"]["val"]["rows"]
    taken = {tuple(e) for name in ("train", "dev") for e in splits[name]["input_ids"]}
    assert not taken & {tuple(e) for e in splits["val"]["input_ids"]}


def test_augmented_rows_are_seeded_and_never_a_dev_train_or_tuning_text(tmp_path, tokenizer):
    """Word-edited copies of the labelled train texts: the same under a seed, others under another; none tokenizes
    like a train, tuning or dev row, and ids are unique."""
    train, dev = sst2_rows("train", 200), sst2_rows("dev", 40)
    (tmp_path / "train.tsv").write_text("\n".join(train) + "\n")
    (tmp_path / "dev.tsv").write_text("\n".join(dev) + "\n")

    def make(seed):
        data = data_config(tmp_path, val_examples=20, augment_copies=3, max_length=64)
        splits, info = add_tuning_split(*prepare_corpus(data, tokenizer, seed=seed), data, seed)
        return add_augmented_split(splits, info, data, tokenizer, seed)

    (a, info), (b, _), (c, _) = make(0), make(0), make(1)
    aug = a["augment"]
    assert aug["input_ids"] == b["augment"]["input_ids"] and aug["input_ids"] != c["augment"]["input_ids"]
    assert len(set(aug["example_id"])) == len(aug) and set(aug["label"]) == {-1}
    others = {tuple(e) for name in ("train", "dev", "val") for e in a[name]["input_ids"]}
    assert not others & {tuple(e) for e in aug["input_ids"]}
    stats = info["splits"]["augment"]
    assert stats["rows_in_source"] == 3 * len(a["train"]) and stats["rows"] == len(aug) > 0.9 * stats["rows_in_source"]
    # a variant of a train row is that row edited: most of its words survive
    first = tokenizer.decode(a["train"][0]["input_ids"], skip_special_tokens=True).split()
    variant = tokenizer.decode(aug[0]["input_ids"], skip_special_tokens=True).split()
    assert aug[0]["example_id"] == a["train"][0]["example_id"] * 3 and variant != first
    assert len(set(first) & set(variant)) >= len(first) // 2


def test_edit_words_changes_at_least_one_word():
    rng = np.random.default_rng(0)
    for words in (["good"], ["a", "fine", "film"], "one two three four five six".split()):
        for _ in range(50):
            out = edit_words(words, ["x", "y"], 0.01, rng)
            assert out and out != words


def test_prepare_stage_writes_the_tuning_split_with_train_and_augmented_rows_with_transfer(tmp_path, sst2_small):
    """`python stages/prepare.py` as dvc runs it: val beside train and dev (the teacher scores its epochs on it),
    augment beside transfer (unlabeled: changing augmentation never retrains the teacher)."""
    import subprocess
    import sys

    import yaml

    from pipeline.data import load_prepared
    from tests.conftest import ROOT

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(
        train=str(sst2_small / "train.tsv"),
        dev=str(sst2_small / "dev.tsv"),
        transfer=str(sst2_small / "train.tsv"),
        max_train_examples=150,
        val_examples=30,
        max_transfer_examples=None,
        augment_copies=2,
    )
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = [sys.executable, str(ROOT / "stages/prepare.py"), "--params", str(tmp_path / "params.yaml")]
    cmd += ["--out", str(tmp_path / "prepared"), "--transfer-out", str(tmp_path / "transfer")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    prepared, info = load_prepared(tmp_path / "prepared")
    unlabeled, _ = load_prepared(tmp_path / "transfer")
    assert list(prepared) == ["train", "dev", "val"] and (len(prepared["train"]), len(prepared["val"])) == (150, 30)
    assert set(unlabeled) == {"transfer", "augment"} and len(unlabeled["augment"]) > 200
    assert "prepare: augment:" in proc.stdout and "prepare: val: 30 rows" in proc.stdout
