"""Evaluation sets of a streaming source give the in-memory evaluation's metrics."""

from __future__ import annotations

import numpy as np
import pytest

from training.config import load_config
from training.data import generate_synthetic, load_data
from training.errors import InputError
from training.evaluation import embed, evaluate_embeddings, evaluate_model
from training.modeling import build_model
from training.shards import write_interactions
from training.splits import split_data
from training.streaming import prepare_streaming
from training.streaming_eval import collect_evaluation, select_users


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval")
    write_interactions(generate_synthetic(200, 60, 3, seed=4).interactions, path, 3, "csv")
    # max_items leaves some test items outside the vocabulary: always misses
    config = load_config(None, ["data.source='file'", f"data.path='{path}'",
                                "data.split='hash-interaction'", "data.max_items=50"])
    streaming = prepare_streaming(config, log=lambda line: None)
    data = load_data(config.data)
    return config, streaming, data, split_data(data.interactions, config.data)


def test_evaluation_sets_give_the_in_memory_metrics(setup):
    config, streaming, data, split = setup
    users = {name: select_users(streaming.split_users(name), None, 0)
             for name in ("validation", "test")}
    sets = collect_evaluation(streaming, users, log=lambda line: None)
    model = build_model(config, streaming.users.tolist(), streaming.items.tolist())
    item_vectors = model.head.normalize(embed(model.item_tower, streaming.items)).numpy()
    for name in ("validation", "test"):
        held_out = split.get(name)
        found = sets[name]
        np.testing.assert_array_equal(found.users, np.unique(held_out.user_id))
        assert (found.test_items == -1).any()  # items outside the vocabulary are kept
        user_vectors = model.head.normalize(embed(model.user_tower, found.users)).numpy()
        streamed = evaluate_embeddings(user_vectors, item_vectors, found.test_users,
                                       found.test_items, [1, 5, 20], found.seen())
        expected = evaluate_model(model, held_out, data.items, [1, 5, 20], seen=split.train)
        assert streamed == pytest.approx(expected, rel=1e-6)


def test_a_user_sample_is_seeded_bounded_and_order_free(setup):
    _, streaming, _, split = setup
    candidates = streaming.split_users("test")
    sample = select_users(candidates, 25, seed=3)
    assert len(sample) == 25 and set(sample) <= set(candidates)
    np.testing.assert_array_equal(select_users(candidates[::-1], 25, seed=3), sample)
    assert set(select_users(candidates, 25, seed=4)) != set(sample)
    sets = collect_evaluation(streaming, {"test": sample}, log=lambda line: None)
    rows = np.isin(split.test.user_id, sample)
    assert len(sets["test"].test_users) == rows.sum()
    assert sets["test"].seen_indptr[-1] == len(sets["test"].seen_items)
    with pytest.raises(InputError, match="cannot evaluate split 'train'"):
        collect_evaluation(streaming, {"train": sample})
