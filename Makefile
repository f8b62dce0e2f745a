# The two commands a new user needs: `make run` and `make test`. Everything else is setup they call.
PYTHON ?= python3
VENV := .venv
TFS_VENV := .venv-tfs
TRITON_VENV := .venv-triton
MLSERVER_VENV := .venv-mlserver
PROTOC_VENV := .venv-protoc
# The oldest grpcio-tools whose generated code the pyproject floors accept (grpcio>=1.66, protobuf>=5.28): its
# *_pb2_grpc.py needs grpcio>=1.66.0 and its *_pb2.py protobuf>=5.27.2 (newer runtimes, 7 included, load it).
PROTOC_TOOLS := grpcio-tools==1.66.0
BIN := $(VENV)/bin
MODELS := models
GRPC_PORT ?= 9178
REST_PORT ?= 8000
STREAMS ?= 8
THROUGHPUT_ITERATIONS ?= 500
BENCH_ARGS ?=
PEER_BENCH_ARGS ?=
PRIORITY_BENCH_ARGS ?=
SOAK_ARGS ?=
# The image (the seed's name and variable), and what an offline build makes it from.
OVMS_CPP_DOCKER_IMAGE ?= ovms:latest
DOCKER_BASE_IMAGE ?= ovms-base:bookworm

.PHONY: run test venv models tfs-client triton-client mlserver lint protos test_perf test_throughput bench bench-peer bench-priority soak \
	clean docker_build docker_build_offline docker_base wheelhouse test-prerequisites test_functional

# `make run FLOWER=1` also starts Celery Flower on :$(FLOWER_PORT) (basic auth from FLOWER_USER / FLOWER_PASSWORD);
# `make run FLOWER=1 FLOWER_PORT=5601` when 5555 is taken.
FLOWER_PORT ?= 5555
RUN_FLAGS := $(if $(FLOWER),--flower_port $(FLOWER_PORT))

run: venv models
	$(BIN)/ovms --config_path $(MODELS)/config.json --port $(GRPC_PORT) --rest_port $(REST_PORT) $(RUN_FLAGS)

test: test-prerequisites venv models tfs-client triton-client mlserver
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/pytest -q

# Debian packages the deployment tests need: installed as root, else one message saying what to install.
test-prerequisites:
	ops/test_prerequisites.sh

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test,models,dev]"
	touch $@

models: venv
	$(BIN)/python ops/build_models.py --output $(MODELS)

# The official TensorFlow Serving client needs full TensorFlow: test-only, in a venv of its own.
tfs-client: $(TFS_VENV)/.installed

$(TFS_VENV)/.installed:
	test -x $(TFS_VENV)/bin/python || $(PYTHON) -m venv $(TFS_VENV)
	$(TFS_VENV)/bin/pip install -q --upgrade pip
	$(TFS_VENV)/bin/pip install -q tensorflow-serving-api
	touch $@

# The official Triton/KServe v2 client pins protobuf < 7 and ml-dtypes <= 0.5.4 (ours are newer): test-only,
# in a venv of its own too.
triton-client: $(TRITON_VENV)/.installed

$(TRITON_VENV)/.installed:
	test -x $(TRITON_VENV)/bin/python || $(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/pip install -q --upgrade pip
	$(TRITON_VENV)/bin/pip install -q "tritonclient[http,grpc]>=2.50"
	touch $@

# MLServer, the peer `make bench-peer` compares with, with OpenVINO for our runtime of it
# (ops/mlserver_openvino/runtime.py): in a venv of its own, as a user would install it.
mlserver: $(MLSERVER_VENV)/.installed

$(MLSERVER_VENV)/.installed:
	test -x $(MLSERVER_VENV)/bin/python || $(PYTHON) -m venv $(MLSERVER_VENV)
	$(MLSERVER_VENV)/bin/pip install -q --upgrade pip
	$(MLSERVER_VENV)/bin/pip install -q "mlserver==1.7.1" "openvino>=2025.0" numpy
	touch $@

lint: venv
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# Generated code is committed; regenerate it after editing a .proto. The generator has a venv of its own: its
# pinned version needs a protobuf older than the server's.
protos: $(PROTOC_VENV)/.installed
	$(PROTOC_VENV)/bin/python -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. --pyi_out=. \
		api/protos/tensorflow.proto api/protos/serving.proto api/protos/model_config.proto api/protos/grpc_service.proto
	rm -f api/protos/tensorflow_pb2_grpc.py api/protos/model_config_pb2_grpc.py

$(PROTOC_VENV)/.installed: Makefile
	test -x $(PROTOC_VENV)/bin/python || $(PYTHON) -m venv $(PROTOC_VENV)
	$(PROTOC_VENV)/bin/pip install -q "$(PROTOC_TOOLS)"
	touch $@

# The seed's latency client against a running server (start it with `make run`).
test_perf: venv models
	$(BIN)/python tests/performance/grpc_latency.py --images_numpy_path $(MODELS)/data/imgs.npy \
		--labels_numpy_path $(MODELS)/data/labels.npy --grpc_port $(GRPC_PORT) --model_name digits \
		--input_name x --output_name probabilities --iterations 1000 --batchsize 1 --report_every 100

# The seed's throughput test: $(STREAMS) parallel latency clients against a running server (`make run`);
# aggregate FPS = total iterations * batch size / wall seconds (process start-up included, as in the seed).
test_throughput: venv models
	@echo "Running throughput test: $(STREAMS) streams x $(THROUGHPUT_ITERATIONS) iterations on digits"
	@logs=$$(mktemp -d); pids=""; start=$$(date +%s.%N); \
	for i in $$(seq 1 $(STREAMS)); do \
		$(BIN)/python tests/performance/grpc_latency.py --images_numpy_path $(MODELS)/data/imgs.npy \
			--labels_numpy_path $(MODELS)/data/labels.npy --grpc_port $(GRPC_PORT) --model_name digits \
			--input_name x --output_name probabilities --iterations $(THROUGHPUT_ITERATIONS) --batchsize 1 \
			>$$logs/$$i.log 2>&1 & pids="$$pids $$!"; \
	done; \
	failed=0; for pid in $$pids; do wait $$pid || failed=1; done; end=$$(date +%s.%N); \
	for i in $$(seq 1 $(STREAMS)); do printf '[%-2s] %s\n' $$i "$$(tail -n 1 $$logs/$$i.log | sed 's/^\[--\] //')"; done; \
	rm -rf $$logs; \
	awk -v s=$$start -v e=$$end -v n=$$(( $(STREAMS) * $(THROUGHPUT_ITERATIONS) )) \
		'BEGIN { printf "wall %.3f s\n%d FPS\n", e - s, n / (e - s) }'; \
	exit $$failed

# Served vs raw OpenVINO, one Markdown table per model (TF Serving and KServe v2 rows); starts and stops its own
# server (see ops/bench.py).
bench: venv models triton-client
	$(BIN)/python ops/bench.py $(BENCH_ARGS)

# Ours against MLServer 1.7.1 on the same IR files with the same KServe v2 load, one Markdown table
# (see ops/peer_bench.py).
bench-peer: venv models triton-client mlserver
	$(BIN)/python ops/peer_bench.py $(PEER_BENCH_ARGS)

# Priorities on one saturated model: high-priority p99 loaded / unloaded, and the low-priority flood's progress
# (see ops/priority_bench.py; its tenant phases need --auth-token-file with tokens naming tenants).
bench-priority: venv models
	$(BIN)/python ops/priority_bench.py $(PRIORITY_BENCH_ARGS)

# The client-facing tests and the seed's docker usage against a container of IMAGE (default: ovms:test, built
# offline first); settings from the environment or user_config.py (tests/functional/settings.py). `make test`
# runs them too.
test_functional: test-prerequisites venv models tfs-client triton-client
	$(BIN)/pytest -q tests/functional

# The image, from the public python:3.11-slim base and PyPI.
docker_build:
	docker build --target runtime -t $(OVMS_CPP_DOCKER_IMAGE) .

# The same image where no registry and no PyPI can be reached from the build: a Debian base made here with
# mmdebstrap (ops/docker/base_image.sh, once) and pip reading only a wheelhouse made on this host.
docker_build_offline: wheelhouse docker_base
	docker build --build-arg PYTHON_IMAGE=$(DOCKER_BASE_IMAGE) \
		--build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/wheels --target runtime -t $(OVMS_CPP_DOCKER_IMAGE) .

docker_base:
	ops/docker/base_image.sh $(DOCKER_BASE_IMAGE)

# Wheels for the image's Python, made by pip in a container of the base image (ops/docker/wheelhouse.sh).
# Remade when pyproject.toml changes.
wheelhouse: ops/docker/wheelhouse/.built

ops/docker/wheelhouse/.built: pyproject.toml | docker_base
	ops/docker/wheelhouse.sh $(DOCKER_BASE_IMAGE)
	touch $@

# Ten minutes at 70% of measured capacity: errors, latency, memory of every process (see ops/soak.py).
soak: venv models
	$(BIN)/python ops/soak.py $(SOAK_ARGS)

clean:
	rm -rf $(VENV) $(TFS_VENV) $(TRITON_VENV) $(MLSERVER_VENV) $(PROTOC_VENV) $(MODELS)
