"""TF Serving's request and response messages, wire-compatible, without TensorFlow.

``from tensorflow_serving.apis import predict_pb2`` imports all of TensorFlow (about 5 s
and 620 MB), because those messages import ``tensorflow.core.framework.*_pb2``. A client
that only calls a model server needs none of it: the bytes on the wire are all that
matter. This module defines the few messages the clients use with protobuf's descriptor
API, with the field names, numbers and types of TF Serving's and TensorFlow's protos:

=====================================  ===================================================
message here                           its original (same fields and numbers)
=====================================  ===================================================
``TensorProto``, ``TensorShapeProto``  ``tensorflow/core/framework/tensor.proto``,
                                       ``tensor_shape.proto``; ``DataType`` from
                                       ``types.proto``
``ModelSpec``                          ``tensorflow_serving/apis/model.proto``
``PredictRequest``/``Response``        ``tensorflow_serving/apis/predict.proto``
``GetModelMetadataRequest``/...        ``tensorflow_serving/apis/get_model_metadata.proto``
``SignatureDefMap``, ``SignatureDef``,  ``get_model_metadata.proto``,
``TensorInfo``                         ``tensorflow/core/protobuf/meta_graph.proto``
``GetModelStatusRequest``/...          ``tensorflow_serving/apis/get_model_status.proto``,
                                       ``tensorflow_serving/util/status.proto``
=====================================  ===================================================

Fields the clients never set or read (``TensorProto.resource_handle_val``,
``TensorInfo.coo_sparse`` ...) are left out; protobuf keeps them as unknown fields when
a server sends them. The package is ``tfrs_cosine.wire``, not ``tensorflow.serving``, so
these descriptors never clash with TensorFlow's in one process; gRPC routes by the
service's method path (``/tensorflow.serving.PredictionService/Predict``), which does
not depend on the message package. ``tests/unit/test_serving_wire.py`` checks every
field against the official descriptors and the encodings byte for byte.

``build_messages`` is the small builder used here and for ``BatchingParameters``
(``serving.batching``), which ``tensorflow-serving-api`` does not ship.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

PACKAGE = "tfrs_cosine.wire"

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "double": _F.TYPE_DOUBLE, "float": _F.TYPE_FLOAT, "int64": _F.TYPE_INT64,
    "uint64": _F.TYPE_UINT64, "int32": _F.TYPE_INT32, "bool": _F.TYPE_BOOL,
    "string": _F.TYPE_STRING, "bytes": _F.TYPE_BYTES, "uint32": _F.TYPE_UINT32,
}
# Message types of other files, by the name used in the field specs below.
_EXTERNAL = {
    "Int64Value": "." + wrappers_pb2.Int64Value.DESCRIPTOR.full_name,
    "StringValue": "." + wrappers_pb2.StringValue.DESCRIPTOR.full_name,
    "Any": "." + any_pb2.Any.DESCRIPTOR.full_name,
}
_DEPENDENCIES = {
    "Int64Value": wrappers_pb2.DESCRIPTOR.name,
    "StringValue": wrappers_pb2.DESCRIPTOR.name,
    "Any": any_pb2.DESCRIPTOR.name,
}

# A field: (name, number, type, label) with label "" (singular), "repeated", "map" (type
# is then "key_type:value_type") or "oneof:NAME".
Field = tuple[str, int, str, str]


def build_messages(
    file_name: str,
    package: str,
    messages: dict[str, Sequence[Field]],
    enums: dict[str, dict[str, int]] | None = None,
) -> dict[str, Any]:
    """Message classes from compact field specs, registered in the default pool.

    Args:
      file_name: the (unique) proto file name, e.g. ``"tfrs_cosine/wire.proto"``.
      package: the proto package of every message.
      messages: message name (``"Outer.Inner"`` for nested) -> fields.
      enums: enum name (``"Outer.Inner"`` for nested) -> value name -> number.

    Returns:
      message name -> class, and enum name -> ``EnumDescriptor``.
    """
    pool = descriptor_pool.Default()
    try:
        existing = pool.FindFileByName(file_name)
    except KeyError:
        existing = None
    if existing is None:
        pool.Add(_file_proto(file_name, package, messages, enums or {}))
    classes: dict[str, Any] = {}
    for name in messages:
        descriptor = pool.FindMessageTypeByName(f"{package}.{name}")
        classes[name] = message_factory.GetMessageClass(descriptor)
    for name in enums or {}:
        classes[name] = pool.FindEnumTypeByName(f"{package}.{name}")
    return classes


def _file_proto(
    file_name: str,
    package: str,
    messages: dict[str, Sequence[Field]],
    enums: dict[str, dict[str, int]],
) -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(name=file_name, package=package, syntax="proto3")
    protos: dict[str, descriptor_pb2.DescriptorProto] = {}

    def container(name: str):
        outer, _, _ = name.rpartition(".")
        return protos[outer].nested_type if outer else file.message_type

    def enum_container(name: str):
        outer, _, _ = name.rpartition(".")
        return protos[outer].enum_type if outer else file.enum_type

    for name in messages:  # outer messages come before their nested ones
        proto = container(name).add(name=name.rpartition(".")[2])
        protos[name] = proto
    for name, values in enums.items():
        enum = enum_container(name).add(name=name.rpartition(".")[2])
        for value_name, number in values.items():
            enum.value.add(name=value_name, number=number)

    def type_ref(type_name: str) -> tuple[int, str]:
        if type_name in _SCALARS:
            return _SCALARS[type_name], ""
        if type_name in _EXTERNAL:
            if _DEPENDENCIES[type_name] not in file.dependency:
                file.dependency.append(_DEPENDENCIES[type_name])
            return _F.TYPE_MESSAGE, _EXTERNAL[type_name]
        if type_name in enums:
            return _F.TYPE_ENUM, f".{package}.{type_name}"
        if type_name in messages:
            return _F.TYPE_MESSAGE, f".{package}.{type_name}"
        raise ValueError(f"{file_name}: unknown type {type_name}")

    for name, fields in messages.items():
        proto = protos[name]
        oneofs: dict[str, int] = {}
        for field_name, number, type_name, label in fields:
            field = proto.field.add(name=field_name, number=number, json_name=_json_name(field_name))
            if label == "map":
                key_type, value_type = type_name.split(":")
                entry_name = "".join(p.capitalize() for p in field_name.split("_")) + "Entry"
                entry = proto.nested_type.add(name=entry_name)
                entry.options.map_entry = True
                for entry_field, entry_number, entry_type in (
                    ("key", 1, key_type), ("value", 2, value_type),
                ):
                    kind, ref = type_ref(entry_type)
                    entry_proto = entry.field.add(
                        name=entry_field, number=entry_number, type=kind,
                        label=_F.LABEL_OPTIONAL, json_name=entry_field,
                    )
                    if ref:
                        entry_proto.type_name = ref
                field.label = _F.LABEL_REPEATED
                field.type = _F.TYPE_MESSAGE
                field.type_name = f".{package}.{name}.{entry_name}"
                continue
            kind, ref = type_ref(type_name)
            field.type = kind
            if ref:
                field.type_name = ref
            field.label = _F.LABEL_REPEATED if label == "repeated" else _F.LABEL_OPTIONAL
            if label.startswith("oneof:"):
                oneof = label.split(":", 1)[1]
                if oneof not in oneofs:
                    oneofs[oneof] = len(proto.oneof_decl)
                    proto.oneof_decl.add(name=oneof)
                field.oneof_index = oneofs[oneof]
    return file


def _json_name(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.capitalize() for p in rest)


# types.proto's DataType (the numbers TensorFlow uses on the wire).
DATA_TYPES = {
    "DT_INVALID": 0, "DT_FLOAT": 1, "DT_DOUBLE": 2, "DT_INT32": 3, "DT_UINT8": 4,
    "DT_INT16": 5, "DT_INT8": 6, "DT_STRING": 7, "DT_COMPLEX64": 8, "DT_INT64": 9,
    "DT_BOOL": 10, "DT_QINT8": 11, "DT_QUINT8": 12, "DT_QINT32": 13, "DT_BFLOAT16": 14,
    "DT_QINT16": 15, "DT_QUINT16": 16, "DT_UINT16": 17, "DT_COMPLEX128": 18, "DT_HALF": 19,
    "DT_RESOURCE": 20, "DT_VARIANT": 21, "DT_UINT32": 22, "DT_UINT64": 23,
}
# error_codes.proto's tensorflow.error.Code (the gRPC status numbers).
ERROR_CODES = {
    "OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5, "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9, "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12,
    "INTERNAL": 13, "UNAVAILABLE": 14, "DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}
# get_model_status.proto's ModelVersionStatus.State.
VERSION_STATES = {
    "UNKNOWN": 0, "START": 10, "LOADING": 20, "AVAILABLE": 30, "UNLOADING": 40, "END": 50,
}

_MESSAGES: dict[str, list[Field]] = {
    "TensorShapeProto": [("dim", 2, "TensorShapeProto.Dim", "repeated"),
                         ("unknown_rank", 3, "bool", "")],
    "TensorShapeProto.Dim": [("size", 1, "int64", ""), ("name", 2, "string", "")],
    "TensorProto": [
        ("dtype", 1, "DataType", ""),
        ("tensor_shape", 2, "TensorShapeProto", ""),
        ("version_number", 3, "int32", ""),
        ("tensor_content", 4, "bytes", ""),
        ("half_val", 13, "int32", "repeated"),
        ("float_val", 5, "float", "repeated"),
        ("double_val", 6, "double", "repeated"),
        ("int_val", 7, "int32", "repeated"),
        ("string_val", 8, "bytes", "repeated"),
        ("scomplex_val", 9, "float", "repeated"),
        ("int64_val", 10, "int64", "repeated"),
        ("bool_val", 11, "bool", "repeated"),
        ("dcomplex_val", 12, "double", "repeated"),
        ("uint32_val", 16, "uint32", "repeated"),
        ("uint64_val", 17, "uint64", "repeated"),
    ],
    "ModelSpec": [
        ("name", 1, "string", ""),
        ("version", 2, "Int64Value", "oneof:version_choice"),
        ("version_label", 4, "string", "oneof:version_choice"),
        ("signature_name", 3, "string", ""),
    ],
    "PredictRequest": [
        ("model_spec", 1, "ModelSpec", ""),
        ("inputs", 2, "string:TensorProto", "map"),
        ("output_filter", 3, "string", "repeated"),
    ],
    "PredictResponse": [
        ("model_spec", 2, "ModelSpec", ""),
        ("outputs", 1, "string:TensorProto", "map"),
    ],
    "TensorInfo": [
        ("name", 1, "string", "oneof:encoding"),
        ("dtype", 2, "DataType", ""),
        ("tensor_shape", 3, "TensorShapeProto", ""),
    ],
    "SignatureDef": [
        ("inputs", 1, "string:TensorInfo", "map"),
        ("outputs", 2, "string:TensorInfo", "map"),
        ("method_name", 3, "string", ""),
    ],
    "SignatureDefMap": [("signature_def", 1, "string:SignatureDef", "map")],
    "GetModelMetadataRequest": [
        ("model_spec", 1, "ModelSpec", ""),
        ("metadata_field", 2, "string", "repeated"),
    ],
    "GetModelMetadataResponse": [
        ("model_spec", 1, "ModelSpec", ""),
        ("metadata", 2, "string:Any", "map"),
    ],
    "StatusProto": [("error_code", 1, "Code", ""), ("error_message", 2, "string", "")],
    "ModelVersionStatus": [
        ("version", 1, "int64", ""),
        ("state", 2, "ModelVersionStatus.State", ""),
        ("status", 3, "StatusProto", ""),
    ],
    "GetModelStatusRequest": [("model_spec", 1, "ModelSpec", "")],
    "GetModelStatusResponse": [("model_version_status", 1, "ModelVersionStatus", "repeated")],
}
_classes = build_messages(
    "tfrs_cosine/wire.proto",
    PACKAGE,
    _MESSAGES,
    {"DataType": DATA_TYPES, "Code": ERROR_CODES, "ModelVersionStatus.State": VERSION_STATES},
)

TensorShapeProto = _classes["TensorShapeProto"]
TensorProto = _classes["TensorProto"]
ModelSpec = _classes["ModelSpec"]
PredictRequest = _classes["PredictRequest"]
PredictResponse = _classes["PredictResponse"]
TensorInfo = _classes["TensorInfo"]
SignatureDef = _classes["SignatureDef"]
SignatureDefMap = _classes["SignatureDefMap"]
GetModelMetadataRequest = _classes["GetModelMetadataRequest"]
GetModelMetadataResponse = _classes["GetModelMetadataResponse"]
StatusProto = _classes["StatusProto"]
ModelVersionStatus = _classes["ModelVersionStatus"]
GetModelStatusRequest = _classes["GetModelStatusRequest"]
GetModelStatusResponse = _classes["GetModelStatusResponse"]

# gRPC method paths: (path, request class, response class).
PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"
METHODS = {
    "Predict": (f"/{PREDICTION_SERVICE}/Predict", PredictRequest, PredictResponse),
    "GetModelMetadata": (
        f"/{PREDICTION_SERVICE}/GetModelMetadata",
        GetModelMetadataRequest,
        GetModelMetadataResponse,
    ),
    "GetModelStatus": (
        f"/{MODEL_SERVICE}/GetModelStatus", GetModelStatusRequest, GetModelStatusResponse,
    ),
}
