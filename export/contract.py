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

A feature model (``[model.user_features]`` and the like) adds model-dependent inputs:
its raw features (``FeatureInputs``, recorded in the model card's ``features``), a
``recommend`` signature taking them, item features in ``embed_items``, and
``because_item_ids`` / ``because_cosine`` in ``explain`` (``signatures_for``). Their
free dimensions: ``N`` (history items per row), ``M`` (excluded items per row), ``L``
(values of a list feature per row). An id-only model's signatures are ``SIGNATURES``,
unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# Files of an export besides the SavedModel, relative to ``models/NAME/<version>/``.
MODEL_CARD = "assets.extra/model_card.json"
USER_VOCABULARY = "assets/users.txt"  # one id per line, UTF-8; line i is table row i + 1
ITEM_VOCABULARY = "assets/items.txt"

# Dimensions whose size a request chooses; the rest are fixed per export.
FREE_DIMS = ("batch", "n", "N", "M", "L")
FIXED_DIMS = ("K", "m", "d")
# dtype name (tf.DType.name) -> TF Serving's DataType enum name.
DTYPES = {
    "string": "DT_STRING", "float32": "DT_FLOAT", "int32": "DT_INT32", "int64": "DT_INT64",
    "bool": "DT_BOOL",
}


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

# ----------------------------------------------------------------------------------------
# feature models

RECOMMEND_NAME = "recommend"
USER_ID = SERVING_DEFAULT.input("user_id")
ITEM_ID = EMBED_ITEMS.input("item_id")
HISTORY = _t(
    "history", "string", ("batch", "N"),
    'the user\'s recent item ids, oldest first, "" pads; the last N the model was trained '
    "with are used",
)
EXCLUDE_ITEM_IDS = _t(
    "exclude_item_ids", "string", ("batch", "M"), 'item ids never returned; "" pads'
)
BECAUSE_ITEM_IDS = _t(
    "because_item_ids", "string", ("batch", "n", "m"),
    'the user\'s history items of highest cosine (item tower) to each item; "" pads',
)
BECAUSE_COSINE = _t(
    "because_cosine", "float32", ("batch", "n", "m"),
    "their cosine of item-tower outputs; the lowest float32 pads",
)
# dtype of each feature type's raw input (``tfrs_cosine.features`` encoders' feature_spec)
FEATURE_DTYPES = {
    "categorical": "string", "multi_categorical": "string", "text": "string",
    "numeric": "float32", "timestamp": "int64",
}


def feature_input(name: str, kind: str) -> TensorSpec:
    """The raw input of a feature of type ``kind`` named ``name``."""
    shape = ("batch", "L") if kind == "multi_categorical" else ("batch",)
    description = f"{kind} feature" + (
        " (Unix seconds; 0: the export's serving time, after its last training interaction)"
        if kind == "timestamp" else "; \"\" pads" if kind == "multi_categorical" else ""
    )
    return TensorSpec(name, FEATURE_DTYPES[kind], shape, description)


@dataclass(frozen=True)
class FeatureInputs:
    """A feature model's raw inputs besides the ids and the history.

    ``user``: the user features (``[model.user_features]`` other than the id and the
    history); ``context``: ``[model.query_context]``; ``item``: ``[model.item_features]``
    other than the id; ``history_length``: N of the model's history feature (0: none).
    """

    user: tuple[TensorSpec, ...] = ()
    context: tuple[TensorSpec, ...] = ()
    item: tuple[TensorSpec, ...] = ()
    history_length: int = 0

    def to_card(self) -> dict:
        def specs(tensors: tuple[TensorSpec, ...]) -> list[dict]:
            return [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in tensors]

        return {"user": specs(self.user), "context": specs(self.context),
                "item": specs(self.item), "history_length": self.history_length}

    @classmethod
    def from_card(cls, card: Mapping) -> FeatureInputs | None:
        """The ``features`` entry of a model card (None for an id-only export)."""
        features = card.get("features")
        if not features:
            return None

        def specs(entries) -> tuple[TensorSpec, ...]:
            return tuple(
                TensorSpec(e["name"], e["dtype"], tuple(e["shape"]), "feature") for e in entries
            )

        return cls(specs(features["user"]), specs(features["context"]),
                   specs(features["item"]), int(features["history_length"]))

    @classmethod
    def from_recommend_inputs(cls, inputs: Mapping[str, tuple[str, int]]) -> FeatureInputs:
        """From the ``recommend`` signature a server reports: ``{name: (dtype, rank)}``.
        (User and context features are not told apart there: all count as ``user``.)"""
        fixed = {USER_ID.name, HISTORY.name, EXCLUDE_ITEM_IDS.name}
        user = tuple(
            TensorSpec(name, dtype, ("batch", "L") if rank == 2 else ("batch",), "feature")
            for name, (dtype, rank) in sorted(inputs.items()) if name not in fixed
        )
        return cls(user=user)


def signatures_for(features: FeatureInputs | None) -> dict[str, Signature]:
    """The signatures of an export: ``SIGNATURES`` for an id-only model, else those of a
    feature model (``recommend`` added, ``explain`` and ``embed_items`` extended)."""
    if features is None:
        return SIGNATURES
    recommend = Signature(
        RECOMMEND_NAME,
        "top-K items for raw query features (new users and a request's own history)",
        inputs=(USER_ID, *features.user, HISTORY, *features.context, EXCLUDE_ITEM_IDS),
        outputs=SERVING_DEFAULT.outputs,
    )
    explain = Signature(
        EXPLAIN.name, EXPLAIN.description + ", and the history items behind each item",
        EXPLAIN.inputs, (*EXPLAIN.outputs, BECAUSE_ITEM_IDS, BECAUSE_COSINE),
    )
    embed_items = Signature(
        EMBED_ITEMS.name, "item vectors from raw item features", (ITEM_ID, *features.item),
        EMBED_ITEMS.outputs,
    )
    ordered = (SERVING_DEFAULT, recommend, explain, SIMILAR_ITEMS, EMBED_USERS, embed_items)
    return {s.name: s for s in ordered}


def sizes_from_card(card: Mapping) -> dict[str, int]:
    """The fixed dimensions of an export, from its model card."""
    return {"K": int(card["k"]), "m": int(card["top_dimensions"]), "d": int(card["model"]["output_dim"])}


def contract_problems(
    metadata: Mapping[str, Mapping[str, Mapping[str, tuple[str, list | None]]]],
    sizes: Mapping[str, int],
    features: FeatureInputs | None = None,
) -> list[str]:
    """Differences between a saved model's signatures and this contract.

    Args:
      metadata: ``{signature: {"inputs"|"outputs": {name: (dtype name, dims)}}}`` with -1
        for an unknown dimension (``export.verify.signature_metadata``).
      sizes: ``{"K": ..., "m": ..., "d": ...}`` of this export.
      features: a feature model's inputs (``FeatureInputs.from_card``); None: id-only.
    """
    problems = []
    signatures = signatures_for(features)
    if set(metadata) != set(signatures):
        problems.append(f"signatures {sorted(metadata)} differ from {sorted(signatures)}")
    for signature in signatures.values():
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


# The feature model the docs show (training/configs/movielens-features.toml's inputs).
EXAMPLE_FEATURES = FeatureInputs(
    user=(feature_input("age", "numeric"), feature_input("gender", "categorical"),
          feature_input("occupation", "categorical"), feature_input("zip_code", "categorical")),
    context=(),  # the shipped config has no context feature (the benchmark chose so)
    item=(feature_input("title", "text"), feature_input("release_year", "numeric"),
          feature_input("genres", "multi_categorical")),
    history_length=20,
)


def markdown_table(features: FeatureInputs | None = None) -> str:
    """The signatures as the Markdown table in docs/architecture.md and the README (of a
    feature model with ``features``: ``EXAMPLE_FEATURES`` is the one they show)."""

    def tensors(specs: tuple[TensorSpec, ...]) -> str:
        return "; ".join(f"`{t.name}` {t.dtype} `[{', '.join(t.shape)}]`" for t in specs)

    rows = ["| signature | inputs | outputs |", "|---|---|---|"]
    rows += [
        f"| `{s.name}` | {tensors(s.inputs)} | {tensors(s.outputs)} |"
        for s in signatures_for(features).values()
    ]
    return "\n".join(rows)
