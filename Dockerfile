# syntax=docker/dockerfile:1
# Three images from this one repository, one target each (issue #7), and a lean worker (issue 15):
#
#   docker build --target rendezvous  -t cosmic-rendezvous  .
#   docker build --platform linux/amd64 --provenance=false --target coordinator -t cosmic-coordinator .
#   docker build --platform linux/amd64 --provenance=false --target worker -t cosmic-worker .
#   docker build --platform linux/amd64 --provenance=false --target worker-lean -t cosmic-worker-lean .
#
# worker-lean is the worker without torch, for native-only deployments (`cosmic deploy
# --worker-image worker-lean`): it runs exported models (`cosmic export`) and has no `script` mode.
#
# The worker, and the coordinator (Step Functions runs its plan and summarize handlers as
# Lambdas, infra/stepfunctions.yaml), are built for linux/amd64 with --provenance=false:
# their Lambdas are x86_64, and Lambda rejects image indexes that carry attestations.
# Every stage installs its dependencies (read from pyproject.toml's extras) before it copies
# the code, so editing services/ only rebuilds the last layers. No secrets are baked in.
# Tags are pinned; pin digests too (@sha256:...) when promoting images to production.
# `cosmic deploy` builds the same three targets through the Docker Engine API (the classic
# builder: single-platform linux/amd64 images, no attestations) and pushes them to ECR.

ARG PYTHON_SLIM=python:3.12.12-slim-bookworm
ARG LAMBDA_PYTHON=public.ecr.aws/lambda/python:3.12.2025.04.28.11

# ---------------------------------------------------------------------------------------------
# slim-base: a virtualenv and a non-root user, shared by rendezvous and coordinator
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_SLIM} AS slim-base
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app
RUN python -m venv /opt/venv \
    && groupadd --system --gid 10001 cosmic \
    && useradd --system --uid 10001 --gid cosmic --create-home --home-dir /home/cosmic cosmic
WORKDIR /app
# each target turns one extra of pyproject.toml into requirements.txt (the dependency layer)
COPY pyproject.toml ./

# ---------------------------------------------------------------------------------------------
# rendezvous-hub: builds the pairing server's optional C hub (services/rendezvous/_hub.c, through
# setup.py) with this stage's compiler; the rendezvous image takes only the built .so, never the
# compiler. Where the build fails, /hub stays empty and the server runs the pure-Python hub
# (COSMIC_RENDEZVOUS_HUB=auto; its "listening" log line says which hub serves).
# ---------------------------------------------------------------------------------------------
FROM slim-base AS rendezvous-hub
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
COPY README.md setup.py ./
COPY services/rendezvous/_hub*.c services/rendezvous/_hub.h ./services/rendezvous/
RUN mkdir /hub && pip install "setuptools>=68" && python setup.py build_ext --inplace \
    && (cp services/rendezvous/_hub*.so /hub/ || echo "the C hub was not built: the image runs the Python hub")

# ---------------------------------------------------------------------------------------------
# rendezvous: the TCPunch-compatible pairing server (10000) and its health port (10001)
# ---------------------------------------------------------------------------------------------
FROM slim-base AS rendezvous
# boto3 is for services.rendezvous.register (Route 53 self-registration, written separately):
# run it before the server by overriding the command, e.g.
#   sh -c "python -m services.rendezvous.register && exec python -m services.rendezvous"
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['rendezvous']))" > requirements.txt \
    && pip install -r requirements.txt "boto3>=1.34"
COPY services/ ./services/
COPY --from=rendezvous-hub /hub/ ./services/rendezvous/
USER 10001:10001
EXPOSE 10000 10001
# the probe uses the health port, never the pairing port (a probe there would be a nameless client)
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:10001/healthz', timeout=2)"]
ENTRYPOINT ["python", "-m", "services.rendezvous"]

# ---------------------------------------------------------------------------------------------
# coordinator: the HTTP API (FastAPI under uvicorn); never torch
# ---------------------------------------------------------------------------------------------
# The same image is the Step Functions pipeline's Plan and Summarize Lambdas: their ImageConfig
# (infra/stepfunctions.yaml) replaces ENTRYPOINT and CMD to run, e.g.,
#   python -m awslambdaric services.coordinator.lambda_handlers.plan_handler
# (awslambdaric is in the coordinator extra; `python` is the venv's, first on PATH). Lambda
# ignores USER and runs its own unprivileged user on a read-only filesystem but for /tmp, so
# nothing may write under /app or HOME: bytecode is off (PYTHONDONTWRITEBYTECODE), and
# matplotlib's config and our cache folder live in /tmp (ENV below). Push it as linux/amd64
# without provenance attestations (see the top of this file).
FROM slim-base AS coordinator
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['coordinator']))" > requirements.txt \
    && pip install -r requirements.txt
COPY services/ ./services/
USER 10001:10001
# matplotlib wants a writable config folder; the cache folder holds nothing the API needs across runs
ENV MPLCONFIGDIR=/tmp/matplotlib \
    COSMIC_CACHE_DIR=/tmp/cosmic-cache
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
# listening beyond loopback: the coordinator refuses to start unless COSMIC_COORDINATOR_API_TOKEN is set
ENTRYPOINT ["python", "-m", "services.coordinator"]
CMD ["--host", "0.0.0.0", "--port", "8000"]

# ---------------------------------------------------------------------------------------------
# worker: the inference handler on AWS's Lambda base image (Amazon Linux 2023)
# ---------------------------------------------------------------------------------------------
# Size, estimated from the installed trees (not measured here: no Docker engine): base ~600 MB +
# the worker extra's 1,153 MB (CPU torch 757, openvino 185, sympy 75, numpy 71, boto3 and the
# rest) = ~1.75 GB uncompressed, under Lambda's 10 GB limit.
# It stays root: Lambda runs the function as its own unprivileged user with a read-only /var/task,
# and the base image has no useradd. Under compose the same image also runs the local runtime
# (`python3 -m services.local.runtime`, see compose.yaml) and the demo-data seeding.
FROM ${LAMBDA_PYTHON} AS worker
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=${LAMBDA_TASK_ROOT} \
    AWS_LAMBDA_FUNCTION_NAME=cosmic-worker
WORKDIR ${LAMBDA_TASK_ROOT}
COPY pyproject.toml /tmp/pyproject.toml
# CPU torch first, from PyTorch's own index: PyPI's torch is a multi-GB CUDA build. The extra's
# torch==2.13.0 is then already satisfied by 2.13.0+cpu.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
    && python3 -c "import tomllib; print('\n'.join(tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']['optional-dependencies']['worker']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt /tmp/pyproject.toml
COPY services/ ${LAMBDA_TASK_ROOT}/services/
# the base image's ENTRYPOINT is /lambda-entrypoint.sh: on Lambda the runtime interface client,
# elsewhere the bundled runtime interface emulator (on :8080, answering to AWS_LAMBDA_FUNCTION_NAME)
CMD ["services.worker.handler.handler"]

# ---------------------------------------------------------------------------------------------
# worker-lean: the same handler without torch, for deployments that run native mode only
# ---------------------------------------------------------------------------------------------
# Native mode runs the checkpoint's export (`cosmic export`: {checkpoint}.onnx and its manifest)
# on OpenVINO and never imports torch, so a cold start skips torch's 1-2 s import. A checkpoint
# without an export, and the legacy `script` mode, fail here naming what to do: deploy `worker`
# for those. Size, estimated from the installed trees (no Docker engine here): base ~600 MB +
# the worker-lean extra's 288 MB (openvino 185, numpy 71, botocore 23, the rest) = ~0.9 GB.
FROM ${LAMBDA_PYTHON} AS worker-lean
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=${LAMBDA_TASK_ROOT} \
    AWS_LAMBDA_FUNCTION_NAME=cosmic-worker \
    COSMIC_WORKER_ENGINE=openvino
WORKDIR ${LAMBDA_TASK_ROOT}
COPY pyproject.toml /tmp/pyproject.toml
RUN python3 -c "import tomllib; print('\n'.join(tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']['optional-dependencies']['worker-lean']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt /tmp/pyproject.toml
COPY services/ ${LAMBDA_TASK_ROOT}/services/
CMD ["services.worker.handler.handler"]
