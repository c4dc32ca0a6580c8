"""TorchServe: one running server and its APIs, seen from outside.

server (start, stop, config.properties), rundir (the start directory: keys, logs, pid),
management (management and inference API clients), health, waiting, metrics_config
(metrics.yaml) and metrics_api (parsing /metrics), protos (the gRPC stubs from TorchServe's
jar). Builds on `build` (a spec names what to register), never on `operate` or `edge`.
"""
