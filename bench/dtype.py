"""smollm2-chat in bfloat16 against float32 on this machine's CPU: speed and accuracy, one run.

    make bench-dtype               # or: .venv/bin/python bench/dtype.py

- speed: `model.generate`, 64 new tokens (end-of-text ignored) for 1 prompt and for a
  static batch of 16, the two dtypes alternated for `--rounds` rounds, the best of each;
- accuracy against float32: greedy-token agreement over 50 chat prompts (32 new tokens
  each: how many prompts give the same tokens, and the mean share of tokens before the
  first difference), and on a fixed text the mean log-likelihood per token and the share of
  positions where both pick the same next token.
Results: bench/results/dtype.json and bench/results/DTYPE.md. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from transerve.build.prepare import model_dir  # noqa: E402
from transerve.build.spec import find_spec  # noqa: E402

RESULTS = REPO / "bench" / "results"
TOPICS = [
    "the moon", "volcanoes", "bread", "the ocean", "trains", "bees", "chess", "rain", "glass", "tea", "maps", "owls",
    "bridges", "music", "salt", "deserts", "clocks", "paper", "snow", "whales", "gardens", "copper", "kites", "rivers",
    "cheese", "lighthouses", "bicycles", "forests", "stars", "coffee", "wind", "castles", "rice", "ants", "mirrors",
    "islands", "radio", "wool", "caves", "honey", "sails", "lakes", "bamboo", "storms", "cotton", "lamps", "wolves",
    "canals", "ice", "markets",
]
TEXT = (
    "TorchServe is a flexible and easy to use tool for serving PyTorch models in production. It loads models from "
    "archives, runs them in worker processes, batches requests that arrive close together, and exposes inference, "
    "management and metrics APIs. A model server has to be fast, but it also has to be predictable: a request that "
    "is accepted should be answered, a bad request should be refused with a clear message, and an operator should be "
    "able to see what the server is doing at any moment. These goals pull in different directions, and the art of "
    "building such a system lies in the trade-offs between them."
)


def chats(tokenizer, prompts: list[str]) -> dict:
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
             for p in prompts]
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def tokens_per_s(model, inputs, rounds: int) -> float:
    best = 0.0
    for _ in range(rounds):
        started = time.perf_counter()
        out = model.generate(**inputs, max_new_tokens=64, min_new_tokens=64, do_sample=False)
        best = max(best, (out.shape[1] - inputs["input_ids"].shape[1]) * out.shape[0] / (time.perf_counter() - started))
    return round(best, 1)


def greedy(model, inputs) -> list[list[int]]:
    out = model.generate(**inputs, max_new_tokens=32, do_sample=False)
    return out[:, inputs["input_ids"].shape[1]:].tolist()


def scored(model, tokenizer) -> tuple[float, torch.Tensor]:
    """The fixed text's mean log-likelihood per token, and the model's top-1 next token at each position."""
    ids = tokenizer(TEXT, return_tensors="pt").input_ids
    logits = model(input_ids=ids).logits[0, :-1].float()
    return round(float(torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None]).mean()), 5), logits.argmax(-1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    path = model_dir(find_spec("smollm2-chat").version("2.0"))
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    models = {dtype: AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).eval()
              for dtype in ("float32", "bfloat16")}
    prompts = [f"Tell me one fact about {topic}." for topic in TOPICS]
    one, sixteen, everything = chats(tokenizer, prompts[:1]), chats(tokenizer, prompts[:16]), chats(tokenizer, prompts)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    speed: dict[str, dict] = {dtype: {"one": 0.0, "sixteen": 0.0} for dtype in models}
    with torch.inference_mode():
        for _ in range(args.rounds):  # alternated: the machine's speed drifts between minutes
            for dtype, model in models.items():
                speed[dtype]["one"] = max(speed[dtype]["one"], tokens_per_s(model, one, 1))
                speed[dtype]["sixteen"] = max(speed[dtype]["sixteen"], tokens_per_s(model, sixteen, 1))
        answers = {dtype: greedy(model, everything) for dtype, model in models.items()}
        scores = {dtype: scored(model, tokenizer) for dtype, model in models.items()}
    likelihood = {dtype: score[0] for dtype, score in scores.items()}
    top1 = round(float((scores["bfloat16"][1] == scores["float32"][1]).float().mean()), 4)
    reference = answers["float32"]
    same = sum(a == b for a, b in zip(answers["bfloat16"], reference))

    def agreed(a: list[int], b: list[int]) -> float:
        n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        return n / max(len(b), 1)

    result = {
        "started": started, "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__, "rounds": args.rounds,
        "tokens_per_s": speed,
        "speedup_bf16": {k: round(speed["bfloat16"][k] / speed["float32"][k], 3) for k in ("one", "sixteen")},
        "greedy_prompts": len(prompts), "greedy_identical": same,
        "greedy_mean_agreed_share": round(sum(map(agreed, answers["bfloat16"], reference)) / len(reference), 4),
        "mean_log_likelihood": likelihood,
        "teacher_forced_top1_agreement": top1,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dtype.json").write_text(json.dumps(result, indent=2) + "\n")
    report = "\n".join([
        "# smollm2-chat: bfloat16 against float32 on CPU (bench/dtype.py)", "",
        f"Run {started} on {result['machine']}, torch {result['torch']}; 64 new tokens, best of {args.rounds} alternated rounds.", "",
        "| dtype | 1 stream tokens/s | 16 streams tokens/s | mean log-likelihood per token |",
        "| --- | --- | --- | --- |",
        *[f"| {d} | {speed[d]['one']} | {speed[d]['sixteen']} | {likelihood[d]} |" for d in models], "",
        f"- bfloat16 / float32 speed: {result['speedup_bf16']['one']} (1 stream), {result['speedup_bf16']['sixteen']} (16 streams)",
        f"- greedy answers identical to float32's (32 tokens): {same} of {len(prompts)} prompts; mean share of tokens "
        f"before the first difference: {result['greedy_mean_agreed_share']}",
        f"- the same top-1 next token as float32 on the fixed text, position by position (teacher forced): {top1}", "",
    ])
    (RESULTS / "DTYPE.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
