"""Edge: what clients meet in front of TorchServe.

gateway (the OpenAI-compatible /v1 routes, passed through to TorchServe's inference API) and
guard (the management API's registration check, HTTP and gRPC). The top wing below `cli`.
"""
