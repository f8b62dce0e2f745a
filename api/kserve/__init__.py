"""The Open Inference Protocol (KServe v2, as Triton, MLServer and OpenVINO Model Server speak it) beside
TensorFlow Serving's API, on the same ports and over the same data plane (api.dataplane).

- datatypes: v2 datatype names <-> the precisions we serve (and a model configuration's DataType names).
- model_info: the protocol's documents (server and model metadata, model configuration) as plain dicts,
  shared by REST and gRPC.
- request_fields: the model version string, the request id, the parameters (their bounds, `timeout`).
- tensors: raw and BYTES input tensors -> the data plane's RequestTensor, for both frontends.
- repository: model readiness, metadata and configuration, the repository index, load and unload, asked of
  the data plane's model repository and answered as plain data.
- grpc_service, grpc_codec: the gRPC frontend (inference.GRPCInferenceService) and its message codec.
- rest_statistics: the REST routes of Triton's statistics extension.
"""
