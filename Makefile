# Two commands on a fresh machine: `make repro` (the study on the embedded data) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUN := PATH="$(CURDIR)/$(VENV)/bin:$$PATH"

.PHONY: setup setup-extras repro test bench mvtec clean

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

# the optional extras (`pip install -e .[ray,slurm,openvino]`): tests/test_cluster.py runs a real Ray
# cluster, tests/test_line_export.py an OpenVINO export
$(VENV)/.extras: $(VENV)/.installed requirements-extras.txt
	$(PY) -m pip install -q -r requirements-extras.txt
	touch $@

setup: $(VENV)/.installed

setup-extras: $(VENV)/.extras

repro: setup
	$(RUN) dvc repro

# two workers, a file's tests together on one (module fixtures built once); the 30 slowest listed
test: setup setup-extras
	$(RUN) $(PY) -m pytest -q -n 2 --dist loadfile --durations=30 tests

# Download MVTec AD (needs internet; checksum-checked) into data/mvtec, then: dvc exp run -S data.dataset=mvtec -S data.root=data/mvtec
# (VisA, BTAD: python -m anomaly_backbones download visa|btad data/<name>; docs/datasets.md)
mvtec: setup
	$(PY) -m anomaly_backbones download mvtec data/mvtec

# Generated outputs only: what git ignores under data/, outputs/, metrics/, reports/, and ROC curves
# another run added to metrics/roc/. The committed run (metrics/metrics.json, speed.json,
# latency.json, roc/) and DVC's cache stay.
clean:
	git clean -fdX -- data outputs metrics reports
	git clean -fd -- metrics/roc
