"""The training job's two inputs: streaming shards and in-memory rows give the job the
same vocabularies, split sizes and metrics; a streamed fit resumes to the
uninterrupted result."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from training.config import load_config
from training.data import generate_synthetic, load_data
from training.evaluation import evaluate_set
from training.job_input import InMemoryInput, StreamingInput, _subset, prepare_input
from training.modeling import build_model
from training.shards import write_interactions
from training.splits import split_data
from training.streaming_eval import collect_evaluation, select_users
from training.train import fit_input

QUIET = {"log": lambda line: None}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    path = tmp_path_factory.mktemp("job-input")
    write_interactions(generate_synthetic(240, 50, 3, seed=2).interactions, path, 3, "csv")
    return path


def config_for(path, *overrides):
    return load_config(None, ["data.source='file'", f"data.path='{path}'",
                              "data.split='hash-interaction'", "training.batch_size=128",
                              "evaluation.ks=[1, 5, 20]", "evaluation.validation_users=40",
                              *overrides])


@pytest.fixture(scope="module")
def inputs(shards):
    config = config_for(shards)
    streaming = prepare_input(config, **QUIET)
    data = load_data(config.data)
    return config, streaming, InMemoryInput(config, data, split_data(data.interactions, config.data))


def test_a_file_source_with_a_per_row_split_streams(inputs, shards):
    config, streaming, memory = inputs
    assert isinstance(streaming, StreamingInput)
    assert isinstance(prepare_input(config_for(shards, "data.split='random'"), **QUIET),
                      InMemoryInput)
    np.testing.assert_array_equal(streaming.users, memory.users)
    np.testing.assert_array_equal(streaming.items, memory.items)
    found, expected = streaming.record(), memory.record()
    for key in ("num_interactions", "num_users", "num_items", "train", "validation", "test"):
        assert found[key] == expected[key], key


def test_the_final_evaluation_is_the_in_memory_one(inputs):
    config, streaming, memory = inputs
    tf.keras.utils.set_random_seed(5)
    model = build_model(config, memory.users.tolist(), memory.items.tolist())
    streamed, in_memory = streaming.evaluate(model, **QUIET), memory.evaluate(model, **QUIET)
    assert streamed.keys() == in_memory.keys() == {"validation", "test"}
    for split in streamed:
        assert streamed[split] == pytest.approx(in_memory[split], rel=1e-6)


def test_monitoring_scores_a_sample_collected_as_a_direct_pass_would(inputs):
    config, streaming, _ = inputs
    monitoring = streaming.monitoring_set()
    assert len(monitoring.users) == config.evaluation.validation_users
    direct = collect_evaluation(streaming.data, {"validation": monitoring.users}, **QUIET)
    direct = direct["validation"]
    np.testing.assert_array_equal(monitoring.test_users, direct.test_users)
    np.testing.assert_array_equal(monitoring.test_items, direct.test_items)
    np.testing.assert_array_equal(monitoring.seen.offsets, direct.seen_indptr)
    np.testing.assert_array_equal(monitoring.seen.columns, direct.seen_items)
    every = streaming.sets["validation"]
    np.testing.assert_array_equal(
        _subset(every, every.users).test_users, every.test_users)  # the identity subset
    assert set(monitoring.users) <= set(every.users)
    np.testing.assert_array_equal(monitoring.users, select_users(
        streaming.data.split_users("validation"), 40, config.training.seed))


class _StopAfter(tf.keras.callbacks.Callback):
    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            raise KeyboardInterrupt


def test_a_streamed_fit_resumes_to_the_uninterrupted_result(inputs, shards, tmp_path):
    _, streaming, _ = inputs
    config = config_for(shards, "training.epochs=2", "training.early_stopping_patience=0")
    reference = fit_input(config, streaming, checkpoint_dir=tmp_path / "reference")
    with pytest.raises(KeyboardInterrupt):
        fit_input(config, streaming, checkpoint_dir=tmp_path / "run", callbacks=[_StopAfter(1)])
    resumed = fit_input(config, streaming, checkpoint_dir=tmp_path / "run")
    assert resumed.epochs_trained == 1 and resumed.history == reference.history
    for a, b in zip(resumed.model.weights, reference.model.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert reference.rows_per_epoch == streaming.data.split_rows["train"]
    metrics = evaluate_set(reference.model, streaming.monitoring_set(), [5])
    assert metrics["recall@5"] == pytest.approx(reference.history[-1]["val_recall_at_5"])
