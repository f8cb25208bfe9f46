"""``Signature.call``'s lean path (``FlatCall``) answers what the public call answers.

A tiny real SavedModel (a variable, two inputs, a graph assertion, a while loop and a
cond) is loaded as the server loads it; every signature is called through the lean path
and through ``ConcreteFunction.__call__``, and the answers are compared.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf

from serving.servable import FlatCall, Servable
from serving.status import RequestError

X = tf.TensorSpec([None], tf.float32, name="x")


class Tiny(tf.Module):
    def __init__(self):
        super().__init__()
        self.weights = tf.Variable([1.0, 2.0, 3.0])

    @tf.function(input_signature=[X, tf.TensorSpec([None], tf.string, name="ids")])
    def scaled(self, x, ids):
        tf.debugging.assert_equal(tf.shape(x)[0], tf.shape(ids)[0], message="batch sizes differ")
        return {
            "scaled": x[:, None] * self.weights,
            "lengths": tf.strings.length(ids),
            "names": tf.strings.join([ids, "!"]),
        }

    @tf.function(input_signature=[X])
    def looped(self, x):
        _, doubled = tf.while_loop(lambda i, s: i < 3, lambda i, s: (i + 1, 2.0 * s), [0, x])
        return {"y": doubled}

    @tf.function(input_signature=[X])
    def branched(self, x):
        return {"y": tf.cond(tf.reduce_sum(x) > 0, lambda: 2.0 * x, lambda: x - 1.0)}


@pytest.fixture(scope="module")
def servable(tmp_path_factory) -> Servable:
    path = tmp_path_factory.mktemp("models") / "1"
    module = Tiny()
    signatures = {"serving_default": module.scaled, "looped": module.looped, "branched": module.branched}
    tf.saved_model.save(module, str(path), signatures=signatures)
    return Servable("tiny", 1, Path(path))


INPUTS = {
    "serving_default": {"x": np.array([1.0, -2.0], np.float32), "ids": np.array([b"a", b"bcd"], object)},
    "looped": {"x": np.array([1.0, -3.0], np.float32)},
    "branched": {"x": np.array([1.0, -3.0], np.float32)},
}


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_the_lean_call_answers_as_the_public_call(servable, name):
    signature = servable.signature(name)
    assert isinstance(signature.flat_call, FlatCall)
    inputs = INPUTS[name]
    lean = signature.call(inputs)
    public = signature.function(**{k: tf.constant(v) for k, v in inputs.items()})
    assert set(lean) == set(public)
    for alias, value in public.items():
        np.testing.assert_array_equal(lean[alias], value.numpy())
        assert lean[alias].dtype == value.numpy().dtype


def test_control_flow_falls_back_to_the_default_executor(servable):
    """The single-threaded executor refuses lowered control flow (Switch/Merge, Enter/Exit):
    such a signature switches to the default executor and still answers (compared above)."""
    for name in sorted(INPUTS):
        servable.signature(name).call(INPUTS[name])
    executors = {name: servable.signature(name).flat_call.executor for name in sorted(INPUTS)}
    assert executors == {"branched": "", "looped": "", "serving_default": FlatCall.SINGLE_THREADED}


def test_graph_errors_keep_their_status_on_the_lean_path(servable):
    signature = servable.signature("serving_default")
    with pytest.raises(RequestError, match="batch sizes differ") as raised:
        signature.call({"x": np.array([1.0], np.float32), "ids": np.array([b"a", b"b"], object)})
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
