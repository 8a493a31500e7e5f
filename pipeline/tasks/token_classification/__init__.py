"""Token classification (NER, CoNLL-2003): word tags in IOB2 aligned to sub-words, the teacher's logits per real
token in the cache, per-token KD, and entity-level precision / recall / F1 with strict IOB2 matching."""

from dataclasses import dataclass

from pipeline.knobs import knob

IGNORE = -100  # the label of a sub-word that is not scored (a word's later sub-words, special tokens, transfer rows)
TOKEN_LABELS, TOKEN_LOGITS = "token_labels", "token_logits"


@dataclass
class TokenClassificationConfig:
    """The `token_classification` section of params.yaml: knobs read only by this task's facets."""

    label_all_tokens: bool = knob(
        False, "prepare: label every sub-word of a word (B- becomes I-), not only the first (the rest -100)"
    )
    token_positions: str = knob(
        "all",
        "distill: the per-token KL at every real token, or only at the labelled (first) sub-words",
        choices=("all", "labeled"),
    )
