"""Masked LM: the teacher's top-k (or sampled) vocabulary logits per real token of rows masked once with seeded BERT masking (the
masking and top-k helpers are in `pipeline.mlm`); students are BertForMaskedLMs scored on masked-token accuracy. Its
texts are read as sequence classification reads them (labels unused)."""

from dataclasses import dataclass

from pipeline.knobs import knob


@dataclass
class MaskedLMConfig:
    """The `masked_lm` section of params.yaml: knobs read only by this task's facets (the teacher's fine-tuning
    masking is `teacher.mlm_probability`, a teacher setting each extra teacher may override)."""

    logits: str = knob(
        "topk",
        "extract: the teacher's vocabulary logits as the k largest (`topk`) or as `samples` ids drawn from its softmax "
        "at `sample_temperature` (`sampled`: unbiased, indices only; distill.temperature must equal it)",
        choices=("topk", "sampled"),
    )
    topk: int = knob(8, "extract: vocabulary logits kept per token (fp16 values + uint16 indices)", gt=0)
    samples: int = knob(16, "extract, `sampled`: vocabulary ids drawn per token (uint16 each: 32 B at 16)", gt=0)
    sample_temperature: float = knob(1.0, "extract, `sampled`: softmax temperature the ids are drawn at", gt=0)
    mlm_probability: float = knob(
        0.15, "extract: share of tokens masked in the cached rows (static, seeded by `seed`)", gt=0, lt=1
    )
    mlm_positions: str = knob(
        "masked", "distill: top-k KL at the masked tokens (DistilBERT) or at all real tokens", choices=("masked", "all")
    )
