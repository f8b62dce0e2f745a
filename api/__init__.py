"""Protocol frontends (TF Serving gRPC and REST), the `ovms` command and its process supervisor."""
