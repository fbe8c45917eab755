# syntax=docker/dockerfile:1
# agr-batch container. GPU (default): NVIDIA's PyTorch image with CUDA and Torch-TensorRT.
#   docker build -t agr-batch .
#   docker run --gpus all -v $PWD/data:/data -v agr-engines:/engines agr-batch \
#       run /data/in --out /data/stats.parquet --model /models/compact.pt
# CPU-only: docker build --build-arg VARIANT=cpu -t agr-batch:cpu .
#
# Compiled engines live in the /engines volume (AGR_BATCH_CACHE), keyed by checkpoint, device
# and library versions. With a model baked in (MODEL build argument), the CPU variant compiles
# its inductor engine at build time; TensorRT engines need the GPU, so build them once per
# host into the volume: docker run --gpus all -v agr-engines:/engines agr-batch compile \
#   /models/model.pt --backend tensorrt

ARG VARIANT=gpu
# NVIDIA's PyTorch container ships CUDA, cuDNN, PyTorch and Torch-TensorRT with TensorRT.
ARG GPU_BASE=nvcr.io/nvidia/pytorch:25.10-py3
ARG CPU_BASE=python:3.11-slim-bookworm

FROM ${GPU_BASE} AS base-gpu
# Keep the container's own torch / torch-tensorrt: never let pip replace them.
RUN pip list --format=freeze | grep -E '^(torch|torchvision|torch[-_]tensorrt|tensorrt)' > /tmp/constraints.txt

FROM ${CPU_BASE} AS base-cpu
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/* \
    && pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu \
        "torch>=2.6,<2.15" "torchvision>=0.21,<0.30" \
    && pip list --format=freeze | grep -E '^(torch|torchvision)==' > /tmp/constraints.txt

FROM base-${VARIANT} AS final
ARG VARIANT
ENV PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    AGR_BATCH_CACHE=/engines

WORKDIR /opt/agr-batch
COPY pyproject.toml README.md ./
COPY agr_batch ./agr_batch
COPY trainer ./trainer
RUN pip install --constraint /tmp/constraints.txt . \
    && agr-batch --version

RUN useradd --create-home --uid 10001 agr \
    && mkdir -p /engines /data /models \
    && chown agr:agr /engines /data /models
USER agr

# Optional: bake a checkpoint in and compile its CPU engine at build time.
ARG MODEL=
COPY --chown=agr:agr ${MODEL:-README.md} /models/
RUN if [ -n "${MODEL}" ]; then \
        ckpt="/models/$(basename "${MODEL}")"; \
        if [ "${VARIANT}" = cpu ]; then agr-batch compile "$ckpt" --backend inductor --device cpu; fi; \
        echo "AGR_MODEL=$ckpt" > /models/.env; \
    fi

VOLUME ["/engines"]
ENTRYPOINT ["agr-batch"]
CMD ["--help"]
