# syntax=docker/dockerfile:1
# agr-batch container. GPU (default): NVIDIA's PyTorch image with CUDA and Torch-TensorRT.
#   docker build -t agr-batch .
#   docker run --gpus all -v $PWD/data:/data -v $PWD/models:/models -v agr-engines:/engines \
#       agr-batch run /data/in --out /data/stats.parquet
# CPU-only: docker build --build-arg VARIANT=cpu -t agr-batch:cpu .
#
# Compiled engines live in the /engines volume (AGR_BATCH_CACHE), keyed by checkpoint, device
# and library versions. TensorRT engines need the GPU, so build them once per host into the
# volume: docker run --gpus all -v agr-engines:/engines -v $PWD/models:/models agr-batch \
#   compile /models/model.pt --backend tensorrt

ARG VARIANT=gpu
# NVIDIA's PyTorch container ships CUDA, cuDNN, PyTorch and Torch-TensorRT with TensorRT.
ARG GPU_BASE=nvcr.io/nvidia/pytorch:25.10-py3
ARG CPU_BASE=python:3.11-slim-bookworm

FROM ${GPU_BASE} AS base-gpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Keep the container's own torch / torch-tensorrt: never let pip replace them.
RUN pip list --format=freeze | grep -E '^(torch|torchvision|torch[-_]tensorrt|tensorrt)' > /tmp/constraints.txt

FROM ${CPU_BASE} AS base-cpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/* \
    && pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu \
        "torch>=2.6,<2.15" "torchvision>=0.21,<0.30" \
    && pip list --format=freeze | grep -E '^(torch|torchvision)==' > /tmp/constraints.txt

# hadolint ignore=DL3006
FROM base-${VARIANT} AS final
ARG VARIANT
# Extras to install, e.g. --build-arg EXTRAS="[ray]" for a KubeRay worker image (KubeRay
# starts its own command, so override the entrypoint there).
ARG EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    AGR_BATCH_CACHE=/engines

WORKDIR /opt/agr-batch
COPY pyproject.toml README.md ./
COPY agr_batch ./agr_batch
COPY trainer ./trainer
# The GPU image also decodes videos with NVDEC (the nvdec extra).
RUN if [ "${VARIANT}" = gpu ] && [ -z "${EXTRAS}" ]; then EXTRAS="[nvdec]"; fi \
    && pip install --constraint /tmp/constraints.txt ".${EXTRAS}" \
    && agr-batch --version

RUN useradd --create-home --uid 10001 agr \
    && mkdir -p /engines /data /models \
    && chown agr:agr /engines /data /models
USER 10001

# The checkpoint is mounted at /models/model.pt (or set AGR_MODEL / pass --model). To bake one
# in and compile its CPU engine at build time, build a small image on top of this one:
#   FROM agr-batch:cpu
#   COPY compact.pt /models/model.pt
#   RUN agr-batch compile /models/model.pt --backend inductor --device cpu
ENV AGR_MODEL=/models/model.pt

VOLUME ["/engines"]
ENTRYPOINT ["agr-batch"]
CMD ["--help"]
