"""Operate: what an operator does to served models, built on `torchserve` and `build`.

rollout (canary, promote, rollback, drain), validate and smoke (an archive's samples answer
before it takes traffic), inprocess (the handler run in-process, without TorchServe, for
validation), deploy (Docker config, KServe and Kubernetes manifests).
"""
