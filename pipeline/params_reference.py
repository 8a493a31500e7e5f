"""The params reference (docs/params.md) as markdown, one table per section, from the knob declarations:
`python -m pipeline.params_reference > docs/params.md` (a test fails when the file is stale)."""

from __future__ import annotations

import dataclasses
import typing

import yaml

from pipeline.config import EnsembleSpec, Params, StudentSpec, TeacherSpec
from pipeline.knobs import bounds_text
from pipeline.specs import MultiTaskStudent

STUDENT_KEYS = [f.name for f in dataclasses.fields(StudentSpec)]  # a multi-task student's table lists only its own


def params_reference() -> str:
    """The params reference as markdown, one table per section, from the knob declarations."""
    lines = [
        "# Params reference",
        "",
        "Generated from the knob declarations (`pipeline/config.py`, each task package's `__init__`) by "
        "`python -m pipeline.params_reference > docs/params.md`; a test fails when this file is stale. Defaults are the values params.yaml ships.",
        "",
    ]
    sections = [
        ("top level", None, Params),
        ("data", "data", None),
        ("teacher", "teacher", None),
        ("teachers.<name> (extra teachers: any `teacher` key set here overrides it for that teacher)", None, TeacherSpec),
        ("extract", "extract", None),
        ("distill (per student: any of these keys under `students.<name>` overrides it for that student)", "distill", None),
        ("students.<name>", None, StudentSpec),
        ("ensembles.<name>", None, EnsembleSpec),
        ("multitask (one student, several task caches)", "multitask", None),
        ("multitask.students.<name> (the keys of students.<name>, and:)", None, MultiTaskStudent),
        ("evaluate", "evaluate", None),
        ("export (every model also as ONNX fp32 and int8, scored by evaluate)", "export", None),
        ("token_classification (read with task: token_classification)", "token_classification", None),
        ("question_answering (read with task: question_answering)", "question_answering", None),
        ("masked_lm (read with task: masked_lm)", "masked_lm", None),
    ]
    hints = typing.get_type_hints(Params)
    for title, attr, cls in sections:
        cls = cls or hints[attr]
        lines += [f"## {title}", "", "| key | default | allowed | what it does |", "|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            hint = typing.get_type_hints(cls).get(f.name)
            nested = typing.get_args(hint)[-1] if typing.get_origin(hint) is dict else hint  # sections of their own
            if f.name == "overrides" or (cls is MultiTaskStudent and f.name in STUDENT_KEYS) or dataclasses.is_dataclass(nested):
                continue
            if f.default is not dataclasses.MISSING:
                default = f"`{yaml.safe_dump(f.default, default_flow_style=True).strip().removesuffix('...').strip()}`"
            elif f.default_factory is not dataclasses.MISSING:
                default = f"`{yaml.safe_dump(f.default_factory(), default_flow_style=True).strip()}`"
            else:
                default = "required"
            lines.append(f"| `{f.name}` | {default} | {bounds_text(f.metadata)} | {f.metadata.get('help', '')} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(params_reference(), end="")
