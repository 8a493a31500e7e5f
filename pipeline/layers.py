"""Layer numbering and pairing, in one place: which teacher layers are cached, which student layer learns from which
teacher layer, and which teacher layers seed a student built from the teacher.

Hidden states are numbered as `output_hidden_states` returns them (0 = embeddings, N = last layer); attention maps,
value vectors and weight copies use transformer layers 1..N.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.errors import PipelineError


def _layer_indices(layers: list[int], num_hidden_layers: int, lowest: int, key: str, valid: str) -> list[int]:
    """Layer numbers (negative from the end) -> sorted unique indices in lowest..N, or one error naming the key."""
    out = []
    for layer in layers:
        index = layer + num_hidden_layers + 1 if layer < 0 else layer
        if not lowest <= index <= num_hidden_layers:
            raise PipelineError(f"params.yaml: {key} has {layer}, out of range: the teacher has {valid}")
        out.append(index)
    return sorted(set(out))


def normalize_layers(layers: list[int], num_hidden_layers: int) -> list[int]:
    """hidden_states indices: 0 = embeddings, N = last layer."""
    return _layer_indices(
        layers, num_hidden_layers, 0, "extract.layers", f"hidden states 0 (embeddings) .. {num_hidden_layers} (last layer)"
    )


def normalize_model_layers(layers: list[int], num_hidden_layers: int, key: str) -> list[int]:
    """Transformer layer numbers 1..N, for attentions and values."""
    return _layer_indices(layers, num_hidden_layers, 1, key, f"layers 1 .. {num_hidden_layers}")


def relation_input(layer: int) -> int:
    """The hidden_states index entering transformer layer `layer`: the input its attention and values are computed from."""
    return layer - 1


def uniform_layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """Teacher layer (1-based) paired with each student layer m = 1..M: floor(m * N / M), so the last maps to the last."""
    return [m * teacher_layers // student_layers for m in range(1, student_layers + 1)]


def hidden_layer_pairs(
    student_layers: int,
    teacher_layers: int,
    cached: list[int],
    layer_map: str = "uniform",
    explicit: list[list[int]] | None = None,
) -> list[tuple[int, int]]:
    """(student layer, teacher layer) pairs for the hidden-state loss (layer 0 = embedding output), or, without
    `explicit`, for the attention loss over cached attention layers.

    Explicit pairs are taken as given (a teacher layer missing from the cache is then an error, raised by the cache
    check). `uniform` pairs student m with teacher floor(m N / M), `last` pairs only the last layers; both keep just the
    pairs whose teacher layer is in the cache.
    """
    if explicit:
        for m, t in explicit:
            if m > student_layers or t > teacher_layers:
                raise PipelineError(
                    f"params.yaml: layer pair [{m}, {t}] is out of range: the student has layers 0..{student_layers}, "
                    f"the teacher 0..{teacher_layers}"
                )
        return [(int(m), int(t)) for m, t in explicit]
    if layer_map == "last":
        return [(student_layers, teacher_layers)] if teacher_layers in cached else []
    return [(m, t) for m, t in enumerate(uniform_layer_map(student_layers, teacher_layers), start=1) if t in cached]


def student_init_layers(
    num_layers: int, init_layers: list[int] | None, teacher_layers: int, source: str = "the teacher"
) -> list[int]:
    """Layers (1-based) of the teacher (or of a deeper checkpoint, `source`) copied into a student: `init_layers`, or
    the uniform map."""
    layers = init_layers if init_layers is not None else uniform_layer_map(num_layers, teacher_layers)
    for layer in layers:
        if not 1 <= layer <= teacher_layers:
            raise PipelineError(
                f"params.yaml: student init layer {layer} is out of range; {source} has layers 1..{teacher_layers}"
            )
    return layers


@dataclass(frozen=True)
class LayerPlan:
    """Which student layer learns from which cached teacher output: hidden-state pairs (and the teacher's width, for
    the projection when widths differ), attention pairs, the value-relation pair and its head count."""

    pairs: list[tuple[int, int]]
    teacher_hidden: int
    attention_pairs: list[tuple[int, int]] = field(default_factory=list)
    value_pair: tuple[int, int] | None = None
    relation_heads: int = 1
    bases: dict = field(default_factory=dict)  # a low-rank cache's layer -> (mean, components) (pipeline.cache.basis)
    projections: dict = field(default_factory=dict)  # relations 'inputs': layer -> its Q/K/V (pipeline.cache.relations)

    @property
    def relation_layers(self) -> list[int]:
        """The teacher layers whose attention maps or value vectors the losses compare with the student's."""
        return sorted({t for _, t in self.attention_pairs} | ({self.value_pair[1]} if self.value_pair else set()))

    @property
    def hidden_layers(self) -> list[int]:
        """The cached teacher hidden layers the losses read: the hidden-state pairs', and under relations 'inputs'
        the inputs of the relation layers (their maps and values are recomputed from them)."""
        inputs = {relation_input(t) for t in self.relation_layers} if self.projections else set()
        return sorted({t for _, t in self.pairs} | inputs)

    @property
    def stored_relations(self) -> tuple[list[int], list[int]]:
        """(attention layers read as cached maps, value layers read as cached vectors): none under relations 'inputs'."""
        if self.projections:
            return [], []
        return [t for _, t in self.attention_pairs], [self.value_pair[1]] if self.value_pair else []
