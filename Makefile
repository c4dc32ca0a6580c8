# The README's two commands: `make serve` and `make test`.
VENV := .venv
STAMP := $(VENV)/.setup-done

.PHONY: setup serve stop status test check docs test-tools test-image soak bench bench-engines bench-gpu bench-generation bench-gateway bench-dtype bench-rollout deploy-manifests archive clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh scripts/build-llama.sh
	bash scripts/setup.sh
	touch $@

serve: setup
	$(VENV)/bin/transerve serve --sample

stop:
	$(VENV)/bin/transerve stop

status:
	$(VENV)/bin/transerve status

test: setup test-tools check
	$(VENV)/bin/python -m pytest -q
	bash scripts/test-image.sh

# The Dockerfile built with podman and run hardened (scripts/test-image.sh, tests/container):
# about 6 minutes cold, seconds after a code change.
test-image: setup
	bash scripts/test-image.sh

# ruff, mypy, the docs tables and `mkdocs build --strict` (scripts/check.sh): seconds, before pytest.
check: setup
	bash scripts/check.sh

# The docs site (docs/, mkdocs.yml) served at http://127.0.0.1:8001 while you edit it.
docs: setup
	$(VENV)/bin/mkdocs serve

test-tools:
	bash scripts/test-tools.sh

# The benchmark (bench/bench.py): raw vs padded baseline vs transerve, the sweep, generation;
# results, table and plots in bench/results/. About 12 minutes on 2 cores. Then the engines
# side by side (bench/engines.py, about 6 minutes more).
bench: setup
	$(VENV)/bin/python -m pip install -q -e '.[bench]'
	$(VENV)/bin/python bench/bench.py
	$(VENV)/bin/python bench/engines.py

# minilm-embed on torch float32 (1.0), torch bfloat16 (1.2) and ONNX Runtime (2.0), raw and
# served, with accuracy beside speed: bench/results/ENGINES.md. About 6 minutes.
bench-engines: setup
	$(VENV)/bin/python bench/engines.py

# On a machine with an NVIDIA GPU: CUDA tests, then embeddings and generation on the GPU;
# bench/results/gpu-*.json. Needs no setup (a GPU image's python3 will do).
bench-gpu:
	bash bench/gpu.sh

# Generation under load (bench/continuous.py): smollm2-chat 3.0 (llama.cpp) against 2.0 (torch),
# closed and open loop, each beside its engine in-process; bench/results/CONTINUOUS.md.
bench-generation: setup
	$(VENV)/bin/python -m pip install -q -e '.[bench]'
	$(VENV)/bin/python bench/continuous.py

# The OpenAI gateway's own cost (bench/gateway.py): p50 added at 1 client, throughput at 64
# clients, against TorchServe's route; bench/results/GATEWAY.md. About 3 minutes.
bench-gateway: setup
	$(VENV)/bin/python bench/gateway.py

# A rollout while four clients stream (bench/rollout_streams.py): every stream's end, and how long
# its client waited; bench/results/rollout-streams-current.json. About 3 minutes.
bench-rollout: setup
	$(VENV)/bin/python bench/rollout_streams.py

# smollm2-chat in bfloat16 against float32 on CPU (bench/dtype.py): speed and accuracy;
# bench/results/DTYPE.md. About 1 minute.
bench-dtype: setup
	$(VENV)/bin/python bench/dtype.py

soak: setup
	$(VENV)/bin/python bench/soak.py

# The example manifests under deploy/kserve and deploy/kubernetes (a test keeps them in step).
deploy-manifests: setup
	$(VENV)/bin/python -m transerve.operate.deploy

clean:
	rm -rf model_store/*.mar model_store/index.json .transerve
