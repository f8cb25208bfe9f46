"""Serving through TF Serving's protocol.

- ``serving.server``: ``tfrs-cosine serve``, a TF Serving-compatible model server (gRPC
  PredictionService + ModelService, REST API) for machines without
  ``tensorflow_model_server`` or without a ScaNN-linked build.
- ``serving.client``: ``RecommenderClient`` (gRPC, ``tensorflow_serving.apis`` stubs) and
  ``RestRecommenderClient`` (REST); both run unchanged against the real TF Serving.
- ``serving.config``: ``models.config`` / ``batching.config`` for the real model server.
- ``serving.cli``: the ``serve``, ``serving-config`` and ``query`` subcommands.

Importing this package is light: TensorFlow is imported only by the modules that need it.
Serving never imports ``training``, ``tfrs_cosine`` or TensorFlow Recommenders.
"""

from serving.errors import ServingError

__all__ = ["ServingError"]
