"""Generation, one way through: the scheduler (continuous batching: waiting room, admission,
prefill budget, cancel, deadlines, 429) hands rows to the decoder, whose engine (handlers/engines)
runs the network over its KV state; token choice (sampling) picks each row's next token; text
(incremental detokenizing, stop strings, the streamable prefix) turns tokens into each row's
text; each step hands back per-row deltas, which the handler's protocol frames at the boundary.

    scheduler.py  continuous batching (TorchServe calls once per decode step)
    decoder.py    rows over an engine: admit / step / evict; what a step produced
    sampling.py   penalties, temperature, top-k/top-p, per-row generators
    text.py       DecodeStream detokenizing, stop strings, what may be streamed
"""
