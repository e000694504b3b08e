# Two entry points on a fresh machine:
#   make run   set up, fill every dashboard page with a first look at the embedded defaults, open the dashboard
#   make test  set up (with Chromium for browser tests) and run the test suite (~16 min idle on 2 cores,
#              ~35 min with both cores busy; the 60-min guard only stops a hung run)
VENV ?= .venv
WB = $(VENV)/bin/workbench
HOST ?= 127.0.0.1
PORT ?= 8050

.PHONY: run test setup figures bench
run:
	scripts/setup.sh
	$(WB) figures --preset first-look
	$(WB) dashboard --host $(HOST) --port $(PORT)

test:
	scripts/setup.sh --browser
	timeout --kill-after=30 3600 $(VENV)/bin/python -m pytest -q

setup:
	scripts/setup.sh --browser

figures:
	scripts/setup.sh
	$(WB) figures

bench:
	scripts/setup.sh
	$(VENV)/bin/python -m benchmarks.run_all
