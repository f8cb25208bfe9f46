"""Serving through TF Serving's protocol.

- ``serving.server``: ``tfrs-cosine serve``, a TF Serving-compatible model server (gRPC
  PredictionService, ModelService and grpc.health.v1.Health; the REST API; dynamic
  batching; Prometheus metrics), built from modules with one job each (the table is in
  ``serving.server`` and docs/architecture.md).
- ``serving.client``: ``RecommenderClient`` (gRPC) and ``RestRecommenderClient`` (REST);
  neither imports TensorFlow (``serving.wire`` holds wire-compatible messages); both run
  unchanged against the real TF Serving.
- ``serving.config``: ``models.config`` / ``batching.config`` for the real model server.
- ``serving.cli``: the ``serve``, ``serving-config`` and ``query`` subcommands.

Importing this package is light: TensorFlow is imported only by the modules that load or
run models (``servable``, ``core``, ``grpc_services``, ``rest``, ``server``). Serving never
imports ``training``, ``tfrs_cosine``'s Keras code or TensorFlow Recommenders.
"""

from serving.errors import ServingError

__all__ = ["ServingError"]
