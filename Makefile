# voicegate: `make run` starts the gateway, `make test` runs every check. Both install what is missing first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
APT_PKGS := sip-tester baresip espeak-ng sox asterisk-core-sounds-en-wav kamailio kamailio-tls-modules chromium nftables tcpdump iproute2 libspeexdsp1
CONFIG ?= voicegate.yaml
ORDER_SERVICE ?= 8090

.PHONY: deps run test lint unit integration bench bench-extra soak clean

deps: $(VENV)/.installed .apt-ok

# Debian packages the tests and the default agent need; installed only when one is missing.
.apt-ok: Makefile
	@missing=$$(for p in $(APT_PKGS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
	@touch $@

$(VENV)/.installed: setup.cfg requirements.lock
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	@# torchaudio's PyPI wheel is built for CUDA torch: beside the CPU torch its C++ extension fails to load
	@# (libc10_cuda.so), so it goes, and torchaudio runs its Python part, all that coqui's inference uses
	rm -f $(VENV)/lib/python3*/site-packages/torchaudio/lib/*.so
	$(PY) -m pip install -q --no-deps -e .
	@touch $@

# The demo routes `orders` and `orderdesk` look orders up in examples/order_status: it runs beside the gateway and
# stops with it (ORDER_SERVICE=0: not started; another number: its port).
run: deps
	@if [ "$(ORDER_SERVICE)" != 0 ]; then $(PY) examples/order_status/server.py --port $(ORDER_SERVICE) & fi; \
	trap 'kill $$(jobs -p) 2>/dev/null' EXIT; \
	$(VENV)/bin/voicegate serve --config $(CONFIG)

lint: deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy telephony media agents

unit: deps
	$(PY) -m pytest -q tests/unit

integration: deps
	$(PY) -m pytest -q tests/integration

test: deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy telephony media agents
	$(PY) -m pytest -q -n 3 --dist loadfile --no-loadscope-reorder --durations=15 tests

# Every module runs even when one misses a target (bench.run exits 1 then); make bench fails at the end if any did.
bench: deps bench-extra
	@status=0; for m in run cascaded s2s turns transports scale load; do \
	  echo "$(PY) -m bench.$$m"; $(PY) -m bench.$$m || status=1; done; exit $$status

# The call soak (bench/soak.py: SOAK_S=600 seconds of SOAK_C concurrent echo calls, by default 80% of the maximum in
# bench/results/load.json through as many workers as it was measured with, else 6 through 2; make test runs 12 s of 2), then malformed SIP at a worker and at the front door,
# 10,000 mutated requests (make test sends 2,000).
soak: deps
	$(PY) -m bench.soak
	FUZZ_MESSAGES=10000 $(PY) -m pytest -q tests/integration/test_workers.py -k malformed

# Pipecat, for the side-by-side rows `make bench` adds when .venv-bench exists; kept out of voicegate's venv.
bench-extra: .venv-bench/.installed

.venv-bench/.installed: bench/requirements-pipecat.lock
	@test -x .venv-bench/bin/python || python3 -m venv .venv-bench
	.venv-bench/bin/python -m pip install -q --upgrade pip
	.venv-bench/bin/python -m pip install -q -r bench/requirements-pipecat.lock
	@touch $@

clean:
	rm -rf $(VENV) .venv-bench .apt-ok build *.egg-info .pytest_cache .mypy_cache bench/results
