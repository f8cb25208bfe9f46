import numpy as np
import pytest

from tfrs_cosine import CosineHead, DotHead, ExplanationLayer, explain


def numpy_explanation(u, items, temperature, head, m):
    """Reference: the same quantities with plain numpy, float64."""
    u = u.astype(np.float64)
    items = items.astype(np.float64)
    dot = np.einsum("bd,bnd->bn", u, items)
    un = np.linalg.norm(u, axis=1)
    inorm = np.linalg.norm(items, axis=2)
    contributions = u[:, None, :] * items / (un[:, None, None] * inorm[..., None])
    cosine = contributions.sum(-1)
    score = (cosine if head == "cosine" else dot) / temperature
    order = np.argsort(-np.abs(contributions), axis=-1, kind="stable")[..., :m]
    top = np.take_along_axis(contributions, order, axis=-1)
    return dict(dot=dot, cosine=cosine, score=score, user_norm=un, item_norms=inorm,
                top_dimensions=order, contributions=top)


@pytest.mark.parametrize("head_cls,kind", [(CosineHead, "cosine"), (DotHead, "dot")])
def test_explanation_matches_numpy(head_cls, kind):
    rng = np.random.default_rng(0)
    u = rng.normal(size=(3, 10)).astype(np.float32)
    items = rng.normal(size=(3, 7, 10)).astype(np.float32)
    got = explain(u, items, head_cls(temperature=0.5), top_m=4)
    want = numpy_explanation(u, items, 0.5, kind, 4)
    for key in ("dot", "cosine", "score", "user_norm", "item_norms", "contributions"):
        np.testing.assert_allclose(got[key].numpy(), want[key], rtol=1e-4, atol=1e-5, err_msg=key)
    np.testing.assert_array_equal(got["top_dimensions"].numpy(), want["top_dimensions"])
    assert got["top_dimensions"].dtype.name == "int32"
    assert bool(got["cosine_is_training_objective"]) is (kind == "cosine")


def test_contributions_sum_to_cosine_when_all_dimensions_are_reported():
    rng = np.random.default_rng(1)
    u, items = rng.normal(size=(2, 6)), rng.normal(size=(2, 5, 6))
    got = explain(u.astype(np.float32), items.astype(np.float32), CosineHead(), top_m=6)
    np.testing.assert_allclose(got["contributions"].numpy().sum(-1), got["cosine"].numpy(),
                               atol=1e-5)
    # m is capped at d
    assert explain(u, items, CosineHead(), top_m=50)["top_dimensions"].shape == (2, 5, 6)


def test_zero_embedding_explains_without_nan():
    got = explain(np.zeros((1, 4), np.float32), np.ones((1, 2, 4), np.float32), CosineHead())
    for key, value in got.items():
        assert np.all(np.isfinite(np.asarray(value, dtype=np.float64))), key
    assert np.all(got["cosine"].numpy() == 0)


def test_cosine_head_ranking_equals_explained_cosine_ranking():
    rng = np.random.default_rng(2)
    u, items = rng.normal(size=(4, 8)), rng.normal(size=(4, 30, 8))
    got = explain(u.astype(np.float32), items.astype(np.float32), CosineHead(0.05))
    np.testing.assert_array_equal(np.argsort(-got["score"].numpy(), axis=1),
                                  np.argsort(-got["cosine"].numpy(), axis=1))


def test_layer_config_round_trip():
    layer = ExplanationLayer(CosineHead(0.3), top_m=3)
    clone = ExplanationLayer.from_config(layer.get_config())
    assert clone.top_m == 3 and isinstance(clone.head, CosineHead)
    assert abs(float(clone.head.temperature) - 0.3) < 1e-6
