# The README's two commands: `make serve` and `make test`.
VENV := .venv
STAMP := $(VENV)/.setup-done

.PHONY: setup serve stop status test test-tools soak archive clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $@

serve: setup
	$(VENV)/bin/transerve serve --sample

stop:
	$(VENV)/bin/transerve stop

status:
	$(VENV)/bin/transerve status

test: setup test-tools
	$(VENV)/bin/python -m pytest -q

test-tools:
	bash scripts/test-tools.sh

soak: setup
	$(VENV)/bin/python bench/soak.py

clean:
	rm -rf model_store/*.mar model_store/index.json .transerve
