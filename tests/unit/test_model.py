"""TwoTowerModel's loss against a numpy softmax cross-entropy with the same corrections."""

import numpy as np
import pytest
import tensorflow as tf

from tfrs_cosine import IdTower, TwoTowerModel, make_head


def _model(head="cosine", **kwargs):
    users = [f"u{i}" for i in range(6)]
    items = [f"i{i}" for i in range(5)]
    tf.keras.utils.set_random_seed(0)
    return TwoTowerModel(IdTower(users, 8), IdTower(items, 8, layer_norm=True),
                         make_head(head, temperature=0.5), **kwargs)


FEATURES = {
    "user_id": tf.constant(["u0", "u1", "u2", "u3"]),
    "item_id": tf.constant(["i0", "i1", "i0", "i4"]),  # i0 twice: an accidental hit
    "item_probability": tf.constant([0.4, 0.1, 0.4, 0.05]),
}


def _numpy_loss(model, remove_hits, logq, hard=None):
    u, i = model(FEATURES)
    scores = model.head(u, i).numpy().astype(np.float64)  # (4, 4) = similarity / T
    if logq:
        scores = scores - np.log(FEATURES["item_probability"].numpy())[None, :]
    ids = FEATURES["item_id"].numpy()
    labels = np.eye(4)
    if remove_hits:
        duplicate = (ids[:, None] == ids[None, :]) & ~np.eye(4, dtype=bool)
        scores = np.where(duplicate, scores + np.finfo(np.float32).min, scores)
    rows = []
    for r in range(4):
        row = scores[r]
        if hard is not None:  # the positive plus the `hard` best negatives
            negatives = [c for c in np.argsort(-row) if c != r][:hard]
            row = row[[r, *negatives]]
            target = 0
        else:
            target = int(labels[r].argmax())
        rows.append(-(row[target] - np.log(np.exp(row - row.max()).sum()) - row.max()))
    return float(np.sum(rows))  # TFRS's Retrieval sums over the batch


@pytest.mark.parametrize("head", ["cosine", "dot"])
@pytest.mark.parametrize("remove_hits,logq", [(False, False), (True, False), (True, True)])
def test_loss_matches_numpy(head, remove_hits, logq):
    model = _model(head, remove_accidental_hits=remove_hits, logq_correction=logq)
    got = float(model.compute_loss(FEATURES))
    assert got == pytest.approx(_numpy_loss(model, remove_hits, logq), rel=1e-4)


def test_hard_negatives_keep_the_hardest():
    model = _model("cosine", num_hard_negatives=2)
    got = float(model.compute_loss(FEATURES))
    assert got == pytest.approx(_numpy_loss(model, False, False, hard=2), rel=1e-4)


def test_logq_with_uniform_sampling_is_no_correction():
    # Softmax is invariant to a shift of a row's logits: subtracting the same log q from
    # every candidate must change nothing; a per-query (row) shift or a sign error would.
    uniform = dict(FEATURES, item_probability=tf.fill([4], 0.25))
    plain = float(_model(logq_correction=False).compute_loss(uniform))
    corrected = float(_model(logq_correction=True).compute_loss(uniform))
    assert corrected == pytest.approx(plain, rel=1e-6)
    # Non-uniform q lowers the popular items' logits: their share of the loss moves.
    skewed = float(_model(logq_correction=True).compute_loss(FEATURES))
    assert abs(skewed - plain) > 1e-3


def test_mismatched_towers_are_rejected():
    with pytest.raises(ValueError, match="tower outputs differ"):
        TwoTowerModel(IdTower(["u"], 8), IdTower(["i"], 4), make_head("dot"))
