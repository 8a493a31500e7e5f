"""Token classification (NER, CoNLL-2003): word tags in IOB2 aligned to sub-words, the teacher's logits per real
token in the cache, per-token KD, and entity-level precision / recall / F1 with strict IOB2 matching."""

IGNORE = -100  # the label of a sub-word that is not scored (a word's later sub-words, special tokens, transfer rows)
TOKEN_LABELS, TOKEN_LOGITS = "token_labels", "token_logits"
