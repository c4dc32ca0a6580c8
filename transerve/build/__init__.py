"""Build: from a model on disk (or a hub snapshot) to a versioned `.mar` archive.

spec (models/<name>/model.yaml, validated), detect (the task from a model's config), hub
(offline snapshots), prepare (GGUF to safetensors, ONNX export, proofs), archive
(torch-model-archiver), scaffold (`transerve init`). Nothing here talks to a running server;
it imports only `handlers/` and the standard library's neighbours.
"""
