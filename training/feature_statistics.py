"""What a pass over the training data measures for the feature encoders.

``FeatureStatistics`` holds, per feature, what its encoder is constructed with
(``required_statistics`` says which); ``training.modeling.build_model`` takes them keyed
by feature name. ``StatisticsAccumulator`` measures one feature chunk by chunk, so a
streaming pipeline can fill it without holding a column, and merges, so shards can be
measured apart. ``tokenize`` and ``split_values`` are the definitions the encoders
use, for the data side to apply the same ones.

Cost per feature: numeric O(1) memory; categorical and text O(distinct values).
No TensorFlow here.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from training.errors import InputError
from training.feature_spec import FeatureConfig

# tf.keras.layers.TextVectorization's defaults (standardize="lower_and_strip_punctuation",
# split="whitespace"): ASCII lowercase, ASCII punctuation removed, ASCII whitespace.
_PUNCTUATION = re.compile(r'[!"#$%&()\*\+,\-\./:;<=>?@\[\\\]^_`{|}~\']')
_WHITESPACE = re.compile(r"[ \t\n\r\f\v]+")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


@dataclass
class FeatureStatistics:
    """Training-data statistics of one feature.

    vocabulary: the known values (categorical, multi_categorical without ``num_bins``,
      sorted) or tokens (text, most frequent first).
    mean, variance: of a numeric or timestamp feature (population variance).
    boundaries: bucket boundaries of a bucketized numeric feature or a timestamp.
    count: the number of values measured.
    """

    vocabulary: list[str] | None = None
    mean: float | None = None
    variance: float | None = None
    boundaries: list[float] | None = None
    count: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for the run directory."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FeatureStatistics:
        return cls(**values)


def required_statistics(feature: FeatureConfig) -> tuple[str, ...]:
    """The ``FeatureStatistics`` fields a feature's encoder needs (id and history: none,
    the id vocabulary is the catalog ``build_model`` gets)."""
    kind = feature.type
    if kind in ("categorical", "multi_categorical"):
        return () if feature.num_bins else ("vocabulary",)
    if kind == "text":
        return ("vocabulary",)
    if kind in ("numeric", "timestamp"):
        return ("mean", "variance") + (("boundaries",) if feature.bucketized else ())
    return ()


def tokenize(text: str) -> list[str]:
    """The tokens ``TextEncoder`` sees in ``text``."""
    return [t for t in _WHITESPACE.split(_PUNCTUATION.sub("", text.translate(_ASCII_LOWER))) if t]


def split_values(value: str | Sequence[str], separator: str) -> list[str]:
    """A multi_categorical value -> its entries (a string is split on ``separator``);
    empty entries are dropped (``""`` is the encoders' padding)."""
    entries = value.split(separator) if isinstance(value, str) else [str(v) for v in value]
    return [e for e in entries if e != ""]


def equal_width_boundaries(low: float, high: float, num_buckets: int) -> list[float]:
    """The ``num_buckets - 1`` inner boundaries of equal-width buckets over ``[low, high]``
    (TFRS's context-features tutorial buckets timestamps this way); none if low == high."""
    if not high > low or num_buckets < 2:
        return []
    return np.linspace(low, high, num_buckets + 1)[1:-1].tolist()


class StatisticsAccumulator:
    """Measures one feature: ``update`` with chunks of raw values, then ``result``.

    Values per type: categorical: strings; multi_categorical: strings (split on the
    feature's separator) or sequences of strings; text: strings; numeric and timestamp:
    numbers (NaN is refused). Features needing no statistics accept anything.
    """

    def __init__(self, name: str, feature: FeatureConfig):
        self.name, self.feature = name, feature
        self.needs = required_statistics(feature)
        self.counts: Counter[str] = Counter()
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0  # sum of squared deviations from the mean
        self.low, self.high = np.inf, -np.inf

    def update(self, values: Iterable[Any]) -> StatisticsAccumulator:
        kind = self.feature.type
        if not self.needs:
            return self
        if kind in ("numeric", "timestamp"):
            self._update_numbers(np.asarray(values, dtype=np.float64).reshape(-1))
            return self
        values = list(values)
        self.count += len(values)
        if kind == "categorical":
            self.counts.update(str(v) for v in values)
        elif kind == "multi_categorical":
            sep = self.feature.separator
            self.counts.update(e for v in values for e in split_values(v, sep))
        else:  # text
            self.counts.update(t for v in values for t in tokenize(str(v)))
        return self

    def _update_numbers(self, x: np.ndarray) -> None:
        if np.isnan(x).any():
            raise InputError(f"feature {self.name!r} has NaN values")
        if len(x) == 0:
            return
        self._combine(len(x), float(x.mean()), float(((x - x.mean()) ** 2).sum()),
                      float(x.min()), float(x.max()))

    def _combine(self, n: int, mean: float, m2: float, low: float, high: float) -> None:
        """Chan et al.'s pairwise update of count, mean and squared deviations."""
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total
        self.low, self.high = min(self.low, low), max(self.high, high)

    def merge(self, other: StatisticsAccumulator) -> StatisticsAccumulator:
        """Adds what ``other`` (the same feature, other rows) measured."""
        if self.feature.type in ("numeric", "timestamp"):
            if other.count:
                self._combine(other.count, other.mean, other.m2, other.low, other.high)
        else:
            self.counts.update(other.counts)
            self.count += other.count
        return self

    def result(self) -> FeatureStatistics:
        if not self.needs:
            return FeatureStatistics()
        kind, where = self.feature.type, f"feature {self.name!r}"
        if kind in ("numeric", "timestamp"):
            if self.count == 0:
                raise InputError(f"{where} has no training values to measure")
            boundaries = None
            if self.feature.bucketized:
                boundaries = list(self.feature.buckets) or equal_width_boundaries(
                    self.low, self.high, self.feature.num_buckets
                )
            return FeatureStatistics(
                mean=self.mean, variance=self.m2 / self.count, boundaries=boundaries,
                count=self.count,
            )
        if not self.counts:
            raise InputError(f"{where} has no training values to build a vocabulary from")
        if kind == "text":
            ranked = sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))
            vocabulary = [token for token, _ in ranked[: self.feature.max_tokens]]
        else:
            vocabulary = sorted(self.counts)
        return FeatureStatistics(vocabulary=vocabulary, count=self.count)
