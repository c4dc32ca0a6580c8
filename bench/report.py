"""The benchmark's report: the targets as ratios, Markdown tables and PNG plots."""

from __future__ import annotations

from pathlib import Path


def _point(scenario: dict, system: str, clients: int) -> dict:
    return next(p for p in scenario["points"] if p["system"] == system and p["clients"] == clients)


def targets(results: dict) -> list[tuple[str, str, str, bool | None]]:
    """(target, goal, reached, met) for each target the run measured."""
    rows = []
    short = results.get("embeddings-short")
    if short:
        served = _point(short, "transerve", 64)["inputs_per_s"]
        baseline = _point(short, "padded baseline", 64)["inputs_per_s"]
        raw = short["raw_inputs_per_s"]
        rows.append(("embeddings, short inputs, 64 clients: transerve / raw", ">= 0.90",
                     f"{served / raw:.2f} ({served:.0f} / {raw:.0f} inputs/s)", served / raw >= 0.90))
        rows.append(("embeddings, short inputs, 64 clients: transerve / padded baseline", ">= 8",
                     f"{served / baseline:.1f} ({served:.0f} / {baseline:.0f} inputs/s)", served / baseline >= 8))
        one = _point(short, "transerve", 1)["latency_ms"]["p50"]
        single = results["raw"]["embedding"]["single_short_ms"]
        trip = short.get("refused_round_trip_ms", {}).get("p50")
        floor = f"; a request refused before the model: {trip:.1f} ms" if trip else ""
        rows.append(("serving overhead: 1 client, one short input, p50 - raw single input", "< 3 ms",
                     f"{one - single:.1f} ms ({one:.1f} - {single:.1f}{floor})", one - single < 3))
    generation = results.get("generation")
    if generation:
        by = {p["clients"]: p for p in generation["points"]}
        if 1 in by and 16 in by:
            ratio = by[16]["tokens_per_s"] / by[1]["tokens_per_s"]
            rows.append(("generation: 16 streams / 1 stream, generated tokens/s", ">= 4",
                         f"{ratio:.1f} ({by[16]['tokens_per_s']:.0f} / {by[1]['tokens_per_s']:.0f} tokens/s)", ratio >= 4))
        forward = generation["raw"]["prompt_forward_ms"]
        ttft = ", ".join(f"{n} stream{'s' if n > 1 else ''} {p['first_chunk_ms']['p50']:.0f} ms" for n, p in sorted(by.items()))
        rows.append(("generation: time to first token p50 (beside one prompt forward pass)", "reported",
                     f"{ttft}; forward pass {forward:.0f} ms ({generation['raw']['prompt_tokens']} tokens)", None))
    return rows


def markdown(results: dict) -> str:
    meta = results["meta"]
    lines = [
        "# Benchmark results",
        "",
        f"`{meta['command']}` on {meta['date']}: {meta['cpus']} CPUs ({meta['machine']}), torch {meta['torch']}, "
        f"{meta.get('seconds', 0):.0f} s in all. Every figure below comes from this one run.",
        "",
        "## Targets",
        "",
        "| target | goal | reached | met |",
        "| --- | --- | --- | --- |",
    ]
    for name, goal, reached, met in targets(results):
        lines.append(f"| {name} | {goal} | {reached} | {'—' if met is None else ('yes' if met else '**no**')} |")
    for label in ("short", "long"):
        scenario = results.get(f"embeddings-{label}")
        if not scenario:
            continue
        raw = results["raw"]["embedding"][label]
        served = scenario["transerve_runtime"]
        lines += [
            "",
            f"## Embeddings, {label} inputs (~{scenario['tokens']:.0f} tokens), one input per request",
            "",
            f"Raw, in-process ({results['raw']['embedding']['threads']} torch threads): {raw['inputs_per_s']:.0f} inputs/s, "
            f"the best of two measurements: before the served points, by batch size "
            f"{', '.join(f'{b}: {v:.0f}' for b, v in raw['inputs_per_s_by_batch'].items())}; after them, "
            f"{', '.join(f'{b}: {v:.0f}' for b, v in raw.get('again_by_batch', {}).items()) or 'not measured'}.",
            *( ["The padded baseline cuts every input at 150 tokens, so on these it runs shorter rows than raw and "
                "transerve, which embed up to 256 tokens as sentence-transformers does."] if label == "long" else []),
            f"transerve as the server reported it: {served['workers']} worker(s) × {served.get('threads') or 'default'} "
            f"torch thread(s), batchSize {served['batchSize']}, maxBatchDelay {served['maxBatchDelay']} ms "
            "(the spec's runtime). CPU: cores busy in each process during the point.",
            "",
            "| system | clients | inputs/s | × raw | p50 ms | p90 ms | p99 ms | errors | CPU: workers | frontend | load generator |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for p in scenario["points"]:
            lat, cpu = p["latency_ms"], p.get("cpu_cores", {})
            lines.append(f"| {p['system']} | {p['clients']} | {p['inputs_per_s']:.1f} | "
                         f"{p['inputs_per_s'] / scenario['raw_inputs_per_s']:.2f} | {lat['p50']} | {lat['p90']} | "
                         f"{lat['p99']} | {p['errors']} | {cpu.get('workers', '')} | {cpu.get('frontend', '')} | "
                         f"{cpu.get('load generator', '')} |")
        lines += ["", f"![embeddings, {label} inputs](embeddings-{label}.png)"]
        micro = results["raw"].get("micro_batches")
        if label == "long" and micro:
            lines += ["", f"Length-sorted micro-batches (`max_batch_tokens: {micro['max_batch_tokens']}`), the handler "
                      f"in-process on {micro['threads']} thread(s), a batch of {micro['requests']} requests mixing short "
                      f"and long inputs: {micro['micro_batches_inputs_per_s']:.1f} inputs/s against "
                      f"{micro['one_call_inputs_per_s']:.1f} in one model call ({micro['speedup']:.2f} ×)."]
        int8 = results["raw"]["embedding"].get("int8_short")
        if label == "short" and int8:
            lines += ["", f"Opt-in int8 (`quantize: int8`, in-process, batch 64): {int8['inputs_per_s_batch_64']:.0f} inputs/s, "
                      f"{int8['speedup']:.2f} × float32; cosine to float32 mean {int8['cosine_to_fp32_mean']}, "
                      f"min {int8['cosine_to_fp32_min']}; nearest-neighbour agreement {int8['nearest_neighbour_agreement']:.0%}."]
    generation = results.get("generation")
    if generation:
        raw = generation["raw"]
        lines += [
            "",
            "## Generation (smollm2-chat), streamed, 64 new tokens per request",
            "",
            f"Raw, in-process: one forward pass over the {raw['prompt_tokens']}-token prompt takes "
            f"{raw['prompt_forward_ms']:.0f} ms; `model.generate` of 64 tokens for one prompt runs at "
            f"{raw['generate_64_tokens_per_s']:.1f} tokens/s.",
            "",
            "| streams | tokens/s | tokens/request | first chunk p50 ms | p99 ms | between chunks p50 ms | p99 ms | request p50 ms | errors |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for p in generation["points"]:
            lines.append(f"| {p['clients']} | {p['tokens_per_s']:.1f} | {p['tokens_per_request']} | "
                         f"{p['first_chunk_ms']['p50']} | {p['first_chunk_ms']['p99']} | {p['between_chunks_ms']['p50']} | "
                         f"{p['between_chunks_ms']['p99']} | {p['latency_ms']['p50']} | {p['errors']} |")
        lines += ["", "![generation](generation.png)"]
    sweep = results.get("sweep")
    if sweep:
        best = max(sweep, key=lambda r: r["inputs_per_s_64"])
        lines += [
            "",
            "## Sweep: minilm-embed runtime settings (short inputs)",
            "",
            f"Highest throughput at 64 clients: {best['workers']} worker(s) × {best['threads']} thread(s), "
            f"batchSize {best['batchSize']}, maxBatchDelay {best['maxBatchDelay']} ms: {best['inputs_per_s_64']:.0f} inputs/s. "
            "Single points are noisy on this machine; means over rows show the trends (layouts and delays: the rows with batchSize 16 and 32):",
            "",
            *sweep_trends(sweep),
            "",
            "| workers × threads | batchSize | maxBatchDelay ms | inputs/s at 64 clients | p99 ms at 64 | p50 ms at 1 client | errors |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in sweep:
            lines.append(f"| {r['workers']} × {r['threads']} | {r['batchSize']} | {r['maxBatchDelay']} | "
                         f"{r['inputs_per_s_64']:.1f} | {r['p99_ms_64']} | {r['p50_ms_1']} | {r['errors']} |")
    return "\n".join(lines) + "\n"


def sweep_trends(sweep: list[dict]) -> list[str]:
    """Mean figures of the sweep: by layout and by delay over its batchSize 16 and 32 rows, and by batchSize."""
    rows = [r for r in sweep if r["batchSize"] >= 16]

    def mean(values) -> float:
        values = list(values)
        return sum(values) / len(values)

    lines = []
    for layout in sorted({(r["workers"], r["threads"]) for r in rows}):
        mine = [r for r in rows if (r["workers"], r["threads"]) == layout]
        lines.append(f"- {layout[0]} worker(s) × {layout[1]} thread(s): {mean(r['inputs_per_s_64'] for r in mine):.0f} inputs/s "
                     f"at 64 clients, p50 {mean(r['p50_ms_1'] for r in mine):.1f} ms at 1 client")
    for batch in sorted({r["batchSize"] for r in sweep}):
        mine = [r for r in sweep if r["batchSize"] == batch]
        lines.append(f"- batchSize {batch} (every layout and delay): {mean(r['inputs_per_s_64'] for r in mine):.0f} inputs/s at 64 clients")
    for delay in sorted({r["maxBatchDelay"] for r in rows}):
        mine = [r for r in rows if r["maxBatchDelay"] == delay]
        lines.append(f"- maxBatchDelay {delay} ms: {mean(r['inputs_per_s_64'] for r in mine):.0f} inputs/s at 64 clients, "
                     f"p50 {mean(r['p50_ms_1'] for r in mine):.1f} ms at 1 client")
    return lines


def plots(results: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for label in ("short", "long"):
        scenario = results.get(f"embeddings-{label}")
        if not scenario:
            continue
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
        for system, style in (("transerve", "o-"), ("padded baseline", "s--")):
            points = sorted((p for p in scenario["points"] if p["system"] == system), key=lambda p: p["clients"])
            clients = [p["clients"] for p in points]
            left.plot(clients, [p["inputs_per_s"] for p in points], style, label=system)
            right.plot(clients, [p["latency_ms"]["p99"] for p in points], style, label=system)
        left.axhline(scenario["raw_inputs_per_s"], color="gray", linestyle=":", label="raw (in-process, best batch)")
        left.set(title=f"throughput, {label} inputs", xlabel="concurrent clients", ylabel="inputs/s", xscale="log")
        right.set(title=f"p99 latency, {label} inputs", xlabel="concurrent clients", ylabel="ms", xscale="log", yscale="log")
        for axis in (left, right):
            axis.set_xticks(list(sorted({p["clients"] for p in scenario["points"]})))
            axis.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
            axis.grid(alpha=0.3)
            axis.legend()
        fig.tight_layout()
        path = out / f"embeddings-{label}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    generation = results.get("generation")
    if generation:
        points = sorted(generation["points"], key=lambda p: p["clients"])
        streams = [p["clients"] for p in points]
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
        left.plot(streams, [p["tokens_per_s"] for p in points], "o-", label="transerve")
        left.plot(streams, [points[0]["tokens_per_s"] * n for n in streams], ":", color="gray", label="linear in streams")
        left.set(title="generated tokens/s", xlabel="concurrent streams", ylabel="tokens/s")
        right.plot(streams, [p["first_chunk_ms"]["p50"] for p in points], "o-", label="first chunk p50")
        right.plot(streams, [p["first_chunk_ms"]["p99"] for p in points], "s--", label="first chunk p99")
        right.axhline(generation["raw"]["prompt_forward_ms"], color="gray", linestyle=":", label="one prompt forward pass")
        right.set(title="time to first token", xlabel="concurrent streams", ylabel="ms", yscale="log")
        for axis in (left, right):
            axis.set_xticks(streams)
            axis.grid(alpha=0.3)
            axis.legend()
        fig.tight_layout()
        path = out / "generation.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def write(results: dict, out: Path) -> None:
    (out / "RESULTS.md").write_text(markdown(results))
    plots(results, out)
