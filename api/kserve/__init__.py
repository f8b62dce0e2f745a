"""The Open Inference Protocol (KServe v2, as Triton, MLServer and OpenVINO Model Server speak it) beside
TensorFlow Serving's API, on the same ports and over the same data plane (api.dataplane).

- datatypes: v2 datatype names <-> the precisions we serve.
- model_info: the protocol's documents (server and model metadata) as plain dicts, shared by REST and gRPC.
- request_fields: the model version string and the `timeout` parameter.
- rest_statistics: the REST routes of Triton's statistics extension.
"""
