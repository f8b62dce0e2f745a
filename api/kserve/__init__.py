"""The Open Inference Protocol (KServe v2, as Triton, MLServer and OpenVINO Model Server speak it) beside
TensorFlow Serving's API, on the same ports and over the same data plane (api.dataplane).

Shared by REST and gRPC:
- datatypes: v2 datatype names <-> the precisions we serve.
- model_info: the protocol's documents (server and model metadata) as plain dicts, and model readiness.
- request_fields: the model version string, the request id and the `timeout` parameter.
- tensors: shapes, raw tensor contents and BYTES elements <-> the data plane's tensors.
- repository: the model repository extension (index, load; unload is refused).
REST: rest_codec (the inference body, JSON and binary tensor data), rest_models and rest_operations (routes).
"""
