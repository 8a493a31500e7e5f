"""The contract between stage one and stage two: schema + manifest, the writer, the reader."""

from pipeline.cache.reader import CacheSplit, TeacherCache
from pipeline.cache.schema import (
    FORMAT_VERSION,
    FieldSpec,
    attention_field,
    check_compatible,
    hidden_field,
    read_manifest,
    token_fields,
    value_field,
)
from pipeline.cache.writer import CacheBatch, CacheWriter

__all__ = [
    "CacheBatch",
    "CacheSplit",
    "CacheWriter",
    "FORMAT_VERSION",
    "FieldSpec",
    "TeacherCache",
    "check_compatible",
    "hidden_field",
    "read_manifest",
    "token_fields",
    "attention_field",
    "value_field",
]
