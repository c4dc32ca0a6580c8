"""Issue 33's scenario: a rollout while clients stream, on one tree of transerve.

    .venv/bin/python bench/rollout_streams.py [--tree PATH] [--label NAME]

smollm2-chat 2.0 (torch, continuous batching) is the default; four clients stream 200 greedy
tokens each on /predictions/smollm2-chat (NDJSON); once every stream has its first chunk,
`rollout smollm2-chat 1.0` runs. Per stream: the chunks received, whether its last chunk (the one
with `details`) came, its finish_reason, the error that ended it, and how long its client waited
after the rollout returned. --tree runs another checkout's code (a worktree of an older commit:
`git worktree add /tmp/old e1583a9`), with this checkout's venv. Results:
bench/results/rollout-streams-<label>.json; nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STREAMS, TOKENS = 4, 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, default=ROOT, help="the transerve checkout to run (default: this one)")
    parser.add_argument("--label", default="current", help="names the results file")
    args = parser.parse_args()
    sys.path.insert(0, str(args.tree.resolve()))
    import requests

    from transerve.build import archive
    from transerve.operate.rollout import Rollouts
    from transerve.torchserve.server import Server
    from transerve.build.spec import find_spec

    spec = find_spec("smollm2-chat")
    work = Path(tempfile.mkdtemp(prefix="rollout-streams-"))
    store, run_dir = work / "store", work / "run"
    for version in ("1.0", "2.0"):
        archive.build(spec.version(version), store, log=lambda *_: None)
    server = Server.on_free_ports(store, run_dir)
    server.start()
    result = {"tree": str(args.tree), "streams": []}
    try:
        management, inference = server.clients()
        management.register("smollm2-chat-2.0.mar", initial_workers=1)
        key = {"Authorization": f"Bearer {server.keys()['inference']}"}
        url = f"{server.url('inference')}/predictions/smollm2-chat"
        streams = [{"chunks": 0, "last_chunk": False, "finish_reason": None, "error": "", "ended": 0.0}
                   for _ in range(STREAMS)]
        first = [threading.Event() for _ in streams]

        def read(i: int) -> None:
            s = streams[i]
            body = {"inputs": "Tell me a long story about the sea.", "stream": True,
                    "parameters": {"max_new_tokens": TOKENS, "ignore_eos": True, "do_sample": False}}
            try:
                with requests.post(url, json=body, headers=key, stream=True, timeout=90) as answer:
                    for line in answer.iter_lines():
                        if line:
                            s["chunks"] += 1
                            first[i].set()
                            chunk = json.loads(line)
                            if "details" in chunk:
                                s["last_chunk"], s["finish_reason"] = True, chunk["details"]["finish_reason"]
            except Exception as e:  # noqa: BLE001 - what ended the stream is the measurement
                s["error"] = f"{type(e).__name__}: {e}"[:200]
            finally:
                s["ended"] = time.monotonic()
                first[i].set()

        threads = [threading.Thread(target=read, args=(i,)) for i in range(STREAMS)]
        for thread in threads:
            thread.start()
        for event in first:
            event.wait(120)
        log: list[str] = []
        began = time.monotonic()
        Rollouts(management, inference, store, run_dir, log=log.append).rollout(spec, "1.0")
        done = time.monotonic()
        for thread in threads:
            thread.join(200)
        result["rollout_s"] = round(done - began, 1)
        result["drain_log"] = [line for line in log if "drain" in line or "waited" in line or "nothing" in line]
        for s in streams:
            ended = s.pop("ended")
            result["streams"].append({**s, "client_waited_after_rollout_s": round(ended - done, 1)})
    finally:
        server.stop()
    out = ROOT / "bench" / "results" / f"rollout-streams-{args.label}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
