"""params.yaml validation: each mistake a user can make gets one message naming the key and the fix."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from pipeline.config import Params
from pipeline.errors import PipelineError
from pipeline.params import load_params, params_from_dict
from pipeline.params_reference import params_reference

ROOT = Path(__file__).resolve().parents[1]


def _params(**sections):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for dotted, value in sections.items():
        *path, last = dotted.split("__")
        node = raw
        for key in path:
            node = node[key]
        node[last] = value
    return raw


def test_the_shipped_params_are_valid():
    params = load_params(ROOT / "params.yaml")
    assert params.students and params.extract.layers
    for name in params.students:
        cfg, seed = params.distill_for(name)
        assert cfg.temperature > 0 and seed == params.seed


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"data": {"max_train_exampels": 5}}, r"unknown key 'data.max_train_exampels' \(did you mean 'max_train_examples'\?\)"),
        ({"extract": {"layers": [2], "dtpye": "float16"}}, r"unknown key 'extract.dtpye' \(did you mean 'dtype'\?\)"),
        ({"studnets": {}}, r"unknown key 'studnets' \(did you mean 'students'\?\)"),
        ({"distill": {"epochs": "three"}}, r"'distill.epochs' must be a number, got 'three'"),
        ({"extract": {"layers": "2,4"}}, r"'extract.layers' must be a list"),
        ({"extract": {"dtype": "int4"}}, r"'extract.dtype' must be one of"),
        ({"distill": {"temperature": 0}}, r"'distill.temperature' must be > 0"),
        ({"data": {"max_length": -3}}, r"'data.max_length' must be > 0"),
    ],
)
def test_bad_sections_are_refused_with_the_key(raw, message):
    raw = {**_params(), **raw}
    with pytest.raises(PipelineError, match=message):
        params_from_dict(raw)


@pytest.mark.parametrize(
    "student, message",
    [
        (
            {"num_layers": 2, "hidden_size": 100, "num_heads": 12, "init": "random"},
            r"'students.s.hidden_size' 100 is not divisible by its 12",
        ),
        ({"num_layers": 0, "hidden_size": 128}, r"'students.s.num_layers' must be > 0"),
        ({"num_layers": 2, "hidden_size": -128}, r"'students.s.hidden_size' must be > 0"),
        ({"num_layers": 2, "hidden_size": 128, "init": "pretrained"}, r"'students.s.init' must be one of"),
        ({"num_layers": 2, "hidden_size": 128, "layers": 3}, r"unknown key 'students.s.layers'"),
        ({"hidden_size": 128}, r"'students.s.num_layers' is required"),
        (
            {"num_layers": 2, "hidden_size": 384, "init": "teacher", "init_layers": [1]},
            r"names 1 teacher layers for 2 student layers",
        ),
    ],
)
def test_bad_students_are_refused(student, message):
    raw = _params()
    raw["students"] = {"s": student}
    with pytest.raises(PipelineError, match=message):
        params_from_dict(raw)


def test_student_names_must_be_path_safe():
    raw = _params()
    raw["students"] = {"../x": {"num_layers": 1, "hidden_size": 64}}
    with pytest.raises(PipelineError, match="student name '../x'"):
        params_from_dict(raw)


def test_per_student_overrides_inherit_the_rest():
    raw = _params()
    raw["students"]["l3"]["temperature"] = 5.0
    raw["students"]["l3"]["seed"] = 7
    params = params_from_dict(raw)
    cfg, seed = params.distill_for("l3")
    assert (cfg.temperature, seed, cfg.epochs) == (5.0, 7, params.distill.epochs)
    with pytest.raises(PipelineError, match="no student named 'nope'"):
        params.distill_for("nope")


def test_missing_params_file_and_bad_yaml(tmp_path):
    with pytest.raises(PipelineError, match="params file not found"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("data: [unclosed\n")
    with pytest.raises(PipelineError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("logit_loss", "kl_div", r"'distill.logit_loss' must be one of \('kl', 'soft_ce', 'mse'\)"),
        ("hidden_loss", "l1", r"'distill.hidden_loss' must be one of"),
        ("layer_map", "skip", r"'distill.layer_map' must be one of"),
        ("layer_pairs", [[1, 2, 3]], r"'distill.layer_pairs' must be a list of \[student_layer, teacher_layer\] pairs"),
        ("temperature_end", -1.0, r"'distill.temperature_end' must be > 0"),
    ],
)
def test_method_choices_are_validated(key, value, message):
    raw = _params()
    raw["distill"][key] = value
    with pytest.raises(PipelineError, match=message):
        params_from_dict(raw)
    raw = _params()
    raw["students"]["l3"][key] = value
    with pytest.raises(PipelineError, match=message.replace("distill", "students.l3")):
        params_from_dict(raw)


def _declared_defaults(cls) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


@pytest.mark.parametrize(
    "section",
    ["data", "teacher", "extract", "distill", "evaluate", "token_classification", "question_answering", "masked_lm"],
)
def test_params_yaml_ships_exactly_the_declared_defaults(section):
    """One source of defaults: every key of a section is declared, and params.yaml holds its declared default, so tests
    built from the dataclasses test what the project ships."""
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())[section]
    declared = _declared_defaults(type(getattr(Params(), section)))
    assert shipped == declared


def test_the_params_reference_is_generated_from_the_declarations():
    assert (ROOT / "docs" / "params.md").read_text() == params_reference(), (
        "run: python -m pipeline.params_reference > docs/params.md"
    )


def test_a_student_override_is_checked_against_the_distill_section():
    raw = _params()
    raw["students"]["l3"].update(temperature=4.0, logit_loss="mse")
    params = params_from_dict(raw)
    cfg, _ = params.distill_for("l3")
    assert (cfg.temperature, cfg.logit_loss, cfg.alpha) == (4.0, "mse", params.distill.alpha)
    assert params.distill.temperature == 2.0  # the section itself is untouched
    for bad, message in [
        ({"temperature": 0}, r"'students.l3.temperature' must be > 0"),
        ({"logit_loss": "l1"}, r"'students.l3.logit_loss' must be one of"),
        ({"temprature": 3}, r"unknown key 'students.l3.temprature' \(did you mean 'temperature'\?\)"),
    ]:
        raw = _params()
        raw["students"]["l3"].update(bad)
        with pytest.raises(PipelineError, match=message):
            params_from_dict(raw)


def test_a_dot_in_a_student_name_is_refused_before_dvc_reads_it_as_nesting():
    raw = _params()
    raw["students"]["l3.v2"] = raw["students"].pop("l3")
    raw["ensembles"] = {}
    with pytest.raises(PipelineError, match=r"student name 'l3.v2' must be letters, digits, '_' or '-'"):
        params_from_dict(raw)


@pytest.mark.parametrize(
    "raw, moved_to",
    [
        ({"data": {"doc_stride": 64}}, "question_answering.doc_stride"),
        ({"extract": {"topk": 8}}, "masked_lm.topk"),
        ({"distill": {"token_positions": "labeled"}}, "token_classification.token_positions"),
        ({"students": {"s": {"num_layers": 1, "hidden_size": 8, "mlm_positions": "all"}}}, "masked_lm.mlm_positions"),
    ],
)
def test_a_task_knob_in_its_old_section_names_its_new_place(raw, moved_to):
    with pytest.raises(PipelineError, match=f"moved to '{moved_to}'"):
        params_from_dict({**_params(), **raw})


def test_each_stage_facet_is_built_with_its_task_section():
    """The facets read their task's own section (and nothing of the others): prepare's windows, extract's top-k and
    distill's loss positions come from params.yaml's task section, defaults when the facet is built bare."""
    from pipeline.tasks.data import task_data
    from pipeline.tasks.fields import task_fields
    from pipeline.tasks.student import task_student

    raw = _params(task="question_answering", question_answering__doc_stride=32, masked_lm__topk=4)
    params = params_from_dict(raw)
    assert params.task_config.doc_stride == 32
    assert task_data(params.task, params.task_config).config.doc_stride == 32
    assert task_data("question_answering").config.doc_stride == 128
    assert task_fields("masked_lm", params.masked_lm).config.topk == 4
    labeled = params_from_dict(_params(task="token_classification", token_classification__token_positions="labeled"))
    assert task_student(labeled.task, labeled.task_config).config.token_positions == "labeled"
    assert params_from_dict(_params()).task_config is None  # sequence classification has no section
