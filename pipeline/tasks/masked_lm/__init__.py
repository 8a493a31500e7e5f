"""Masked LM: the teacher's top-k vocabulary logits per real token of rows masked once with seeded BERT masking (the
masking and top-k helpers are in `pipeline.mlm`); students are BertForMaskedLMs scored on masked-token accuracy. Its
texts are read as sequence classification reads them (labels unused)."""
