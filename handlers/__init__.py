"""The TorchServe side of transerve: one handler, bundled into every .mar archive.

Runs inside a TorchServe worker; imports only torch, transformers, ts and the standard library.
"""
