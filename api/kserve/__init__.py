"""The Open Inference Protocol (KServe v2, as Triton, MLServer and OpenVINO Model Server speak it) beside
TensorFlow Serving's API, on the same ports and over the same data plane (api.dataplane).

Shared by REST and gRPC (one function per concern, both frontends call it):
- datatypes: v2 datatype names <-> the precisions we serve (and a model configuration's DataType names).
- model_info: the protocol's documents (server and model metadata, model configuration) as plain dicts,
  and the one list of the extensions served.
- request_fields: the model version string, the request id, the parameters (their bounds, `timeout`, the
  tensor parameters of extensions not served).
- tensors: shapes, raw tensor contents and BYTES elements <-> the data plane's tensors.
- repository: model readiness, metadata and configuration, the repository index, load and unload, asked of
  the data plane's model repository and answered as plain data.
gRPC: grpc_service (inference.GRPCInferenceService) and grpc_codec (its messages).
REST: rest_codec (the inference body, JSON and binary tensor data), rest_models (model routes),
rest_operations (server and repository routes), rest_statistics (the statistics extension's routes).
"""
