# make demo   : create/refresh .venv from the project's own files, then run `fednode demo --serve` (the
#               nodes and their desks stay up, URLs and logins printed, until Ctrl-C)
# make test   : create/refresh .venv, then run the whole test suite (PostgreSQL tests included when
#               the server at 127.0.0.1:5432 answers; CI makes them mandatory)
# make dist   : one archive per target (Python version x platform) in dist/ for an install with no
#               package index: the wheels of fednode and every dependency (postgres, mysql, oracle, mssql extras),
#               install.sh, the systemd unit and the docs (deploy/README.md, "Installing on a closed
#               network"). More targets, e.g.:
#               make dist DIST_PYTHONS="3.11 3.12" DIST_PLATFORMS="manylinux_2_28_x86_64 manylinux_2_28_aarch64"
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test venv proto proto-check lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[postgres,dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/fednode demo --serve

test: $(STAMP)
	$(BIN)/python -m pytest -q

proto: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. \
		--mypy_out=. proto/fednode/v1/fednode.proto

# fails when the committed generated code differs from what `make proto` produces; the version
# floors the generators stamp (GRPC_GENERATED_VERSION, the protobuf runtime check) follow the patch
# release of grpcio-tools the index offers that day, so they are not a difference
PROTO_STAMP_LINES = -I '^GRPC_GENERATED_VERSION = ' -I '^\# Protobuf Python Version: ' -I '^    [0-9][0-9]*,$$'
proto-check: $(STAMP)
	rm -rf build/proto-check && mkdir -p build/proto-check
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m grpc_tools.protoc -I . --python_out=build/proto-check \
		--grpc_python_out=build/proto-check --mypy_out=build/proto-check proto/fednode/v1/fednode.proto
	for f in fednode_pb2.py fednode_pb2.pyi fednode_pb2_grpc.py; do \
		diff -u $(PROTO_STAMP_LINES) proto/fednode/v1/$$f build/proto-check/proto/fednode/v1/$$f >/dev/null || \
		{ echo "proto/fednode/v1/$$f is stale: run 'make proto' and commit"; exit 1; }; done
	@echo "generated protobuf code is current"

lint: $(STAMP)
	$(BIN)/ruff check node adapters tests bench
	$(BIN)/mypy node adapters

bench: $(STAMP)
	$(BIN)/fednode bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

# the default target is this machine: its Python version and architecture, glibc 2.28 or newer
DIST_DIR       ?= dist
DIST_PYTHONS   ?= $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
DIST_PLATFORMS ?= manylinux_2_28_$(shell uname -m)

.PHONY: dist
dist: $(STAMP)
	$(BIN)/python deploy/dist/build.py --out $(DIST_DIR) $(foreach p,$(DIST_PYTHONS),--python $(p)) \
		$(foreach p,$(DIST_PLATFORMS),--platform $(p))
