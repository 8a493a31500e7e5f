"""Sequence classification: one label per example; the default task shape and the base of the others' facets."""
