"""The export contract: every signature's name, inputs and outputs, dtypes and shapes.

This is the one definition of what an export serves. The SavedModel builder takes its
input signatures and output shapes from it, ``export.verify`` checks a saved model
against it, the serving tests and clients read names from it, and the docs table is
rendered from it (``markdown_table``; a test keeps docs/architecture.md equal to it).

Pure Python: importing it loads neither TensorFlow nor protobuf, so a client may use it.

Dimensions are symbolic: ``batch`` and ``n`` (items per explained row) are free (any
size); ``K`` (items returned), ``m`` (explained dimensions) and ``d`` (embedding width)
are fixed per export and recorded in its model card (``k``, ``top_dimensions``,
``model.output_dim``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# Files of an export besides the SavedModel, relative to ``models/NAME/<version>/``.
MODEL_CARD = "assets.extra/model_card.json"
USER_VOCABULARY = "assets/users.txt"  # one id per line, UTF-8; line i is table row i + 1
ITEM_VOCABULARY = "assets/items.txt"

# Dimensions whose size a request chooses; the rest are fixed per export.
FREE_DIMS = ("batch", "n")
FIXED_DIMS = ("K", "m", "d")
# dtype name (tf.DType.name) -> TF Serving's DataType enum name.
DTYPES = {"string": "DT_STRING", "float32": "DT_FLOAT", "int32": "DT_INT32", "bool": "DT_BOOL"}


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output: ``dtype`` (a ``tf.DType`` name) and symbolic ``shape``."""

    name: str
    dtype: str
    shape: tuple[str, ...]
    description: str

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}")
        unknown = set(self.shape) - set(FREE_DIMS) - set(FIXED_DIMS)
        if unknown:
            raise ValueError(f"unknown dimension(s) {sorted(unknown)} in {self.name}")

    def dims(self, sizes: Mapping[str, int]) -> list[int | None]:
        """The concrete shape for one export: free dims are None, fixed ones from ``sizes``."""
        return [None if dim in FREE_DIMS else int(sizes[dim]) for dim in self.shape]

    @property
    def proto_dtype(self) -> str:
        """TF Serving's ``DataType`` name (``DT_STRING``, ``DT_FLOAT`` ...)."""
        return DTYPES[self.dtype]


@dataclass(frozen=True)
class Signature:
    name: str
    description: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def input(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs if t.name == name)

    def output(self, name: str) -> TensorSpec:
        return next(t for t in self.outputs if t.name == name)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)


def _t(name: str, dtype: str, shape: tuple[str, ...], description: str) -> TensorSpec:
    return TensorSpec(name, dtype, shape, description)


SERVING_DEFAULT = Signature(
    "serving_default",
    "top-K items for each user",
    inputs=(_t("user_id", "string", ("batch",), "user ids; unknown ids are answered"),),
    outputs=(
        _t("item_ids", "string", ("batch", "K"), 'best first; "" pads when fewer than K exist'),
        _t("scores", "float32", ("batch", "K"), "the head's similarity, no temperature"),
        _t("known_user", "bool", ("batch",), "the user id was in the training vocabulary"),
    ),
)
EXPLAIN = Signature(
    "explain",
    "cosine, dot, norms and top contributing dimensions of given user-item pairs",
    inputs=(
        _t("user_id", "string", ("batch",), "user ids"),
        _t("item_ids", "string", ("batch", "n"), "items to explain, one row per user"),
    ),
    outputs=(
        _t("cosine", "float32", ("batch", "n"), "cosine of the tower outputs"),
        _t("dot", "float32", ("batch", "n"), "dot product of the tower outputs"),
        _t("score", "float32", ("batch", "n"), "what the trained head ranks by (with temperature)"),
        _t("user_norm", "float32", ("batch",), "|u|"),
        _t("item_norms", "float32", ("batch", "n"), "|i|"),
        _t("top_dimensions", "int32", ("batch", "n", "m"), "dimensions of largest |u_d i_d|"),
        _t("contributions", "float32", ("batch", "n", "m"), "u_d i_d / (|u| |i|) of those"),
        _t("known_user", "bool", ("batch",), "the user id was known"),
        _t("known_items", "bool", ("batch", "n"), "each item id was known"),
        _t(
            "cosine_is_training_objective", "bool", ("batch",),
            "true only for a cosine-head model: else the cosine is not what it learned",
        ),
    ),
)
SIMILAR_ITEMS = Signature(
    "similar_items",
    "the K items of highest cosine to each item (itself excluded)",
    inputs=(_t("item_id", "string", ("batch",), "item ids"),),
    outputs=(
        _t("item_ids", "string", ("batch", "K"), 'best first; "" pads'),
        _t("cosine", "float32", ("batch", "K"), "cosine of the item tower outputs"),
        _t("known_item", "bool", ("batch",), "the item id was known"),
    ),
)
EMBED_USERS = Signature(
    "embed_users",
    "user vectors as the head compares them",
    inputs=(_t("user_id", "string", ("batch",), "user ids"),),
    outputs=(_t("embeddings", "float32", ("batch", "d"), "normalized for the cosine head"),),
)
EMBED_ITEMS = Signature(
    "embed_items",
    "item vectors as the head compares them",
    inputs=(_t("item_id", "string", ("batch",), "item ids"),),
    outputs=(_t("embeddings", "float32", ("batch", "d"), "normalized for the cosine head"),),
)

SIGNATURES: dict[str, Signature] = {
    s.name: s for s in (SERVING_DEFAULT, EXPLAIN, SIMILAR_ITEMS, EMBED_USERS, EMBED_ITEMS)
}
SIGNATURE_NAMES: tuple[str, ...] = tuple(SIGNATURES)


def sizes_from_card(card: Mapping) -> dict[str, int]:
    """The fixed dimensions of an export, from its model card."""
    return {"K": int(card["k"]), "m": int(card["top_dimensions"]), "d": int(card["model"]["output_dim"])}


def contract_problems(
    metadata: Mapping[str, Mapping[str, Mapping[str, tuple[str, list | None]]]],
    sizes: Mapping[str, int],
) -> list[str]:
    """Differences between a saved model's signatures and this contract.

    Args:
      metadata: ``{signature: {"inputs"|"outputs": {name: (dtype name, dims)}}}`` with -1
        for an unknown dimension (``export.verify.signature_metadata``).
      sizes: ``{"K": ..., "m": ..., "d": ...}`` of this export.
    """
    problems = []
    if set(metadata) != set(SIGNATURES):
        problems.append(f"signatures {sorted(metadata)} differ from {sorted(SIGNATURES)}")
    for signature in SIGNATURES.values():
        for side, tensors in (("inputs", signature.inputs), ("outputs", signature.outputs)):
            got = metadata.get(signature.name, {}).get(side, {})
            names = sorted(t.name for t in tensors)
            if sorted(got) != names:
                problems.append(f"{signature.name} {side} {sorted(got)} differ from {names}")
                continue
            for spec in tensors:
                dims = [-1 if d is None else d for d in spec.dims(sizes)]
                expected = (spec.dtype, dims)
                if (got[spec.name][0], list(got[spec.name][1] or [])) != expected:
                    problems.append(f"{signature.name}.{spec.name} is {got[spec.name]}, expected {expected}")
    return problems


def markdown_table() -> str:
    """The signatures as the Markdown table in docs/architecture.md and the README."""

    def tensors(specs: tuple[TensorSpec, ...]) -> str:
        return "; ".join(f"`{t.name}` {t.dtype} `[{', '.join(t.shape)}]`" for t in specs)

    rows = ["| signature | inputs | outputs |", "|---|---|---|"]
    rows += [
        f"| `{s.name}` | {tensors(s.inputs)} | {tensors(s.outputs)} |" for s in SIGNATURES.values()
    ]
    return "\n".join(rows)
