"""Offline knowledge distillation of BERT models.

Stage one (`pipeline.extract`) runs a fine-tuned teacher once and writes its outputs into a sharded cache
(`pipeline.cache`); stage two (`pipeline.distill`) trains students from that cache with no teacher in memory.
"""
