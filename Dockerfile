# syntax=docker/dockerfile:1
#
# The LSMSeg worker: `python -m lsmseg.service` (uvicorn, one model per process) on port 8000.
#
#   docker build -t lsmseg:gpu .                           CUDA (the default)
#   docker build -t lsmseg:cpu --build-arg VARIANT=cpu .   CPU only
#
# Both serve the embedded demo checkpoint (package data, 22 MB) when no model is configured; real weights are
# read from the volume mounted at /models (docs/deployment.md), never downloaded.
#
# Why this GPU base: torch and onnxruntime-gpu must agree on one CUDA and one cuDNN. onnxruntime-gpu 1.31 from
# PyPI is built for CUDA 13.x + cuDNN 9.x, and onnxruntime uses the CUDA/cuDNN libraries torch has loaded when
# torch is imported first (the service imports it long before onnxruntime). So: a PyTorch image built for
# CUDA 13.0 with cuDNN 9. On a CUDA 12 base onnxruntime's CUDA provider fails to load and it silently runs on
# the CPU (/readyz lists the providers actually in use). The "runtime" flavour is enough: every dependency
# installs from wheels, nothing is compiled.
ARG VARIANT=gpu
ARG GPU_BASE=pytorch/pytorch:2.12.0-cuda13.0-cudnn9-runtime
ARG CPU_BASE=python:3.11-slim-bookworm

# ---- the package as a wheel, and its dependency list (pure Python: built once for either variant) ---------
FROM ${CPU_BASE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['onnx']))" > /requirements.txt
COPY checkpoints/__init__.py checkpoints/demo.safetensors ./checkpoints/
COPY model ./model
COPY prompt_cache ./prompt_cache
COPY service ./service
COPY training ./training
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---- torch: the GPU base brings its own; the CPU variant takes the CPU-only wheels (~10× smaller) --------
FROM ${GPU_BASE} AS torch-gpu

FROM ${CPU_BASE} AS torch-cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# The GPU base's release, so both variants run the same torch (a rebuild never picks up a new one silently).
ARG TORCH_VERSION=2.12.0
ARG TORCHVISION_VERSION=0.27.0
RUN pip install --no-cache-dir --index-url ${TORCH_INDEX_URL} \
    torch==${TORCH_VERSION} torchvision==${TORCHVISION_VERSION}

# ---- the worker --------------------------------------------------------------------------------------------
# hadolint ignore=DL3006
FROM torch-${VARIANT} AS runtime
ARG ORT_VERSION=1.31.1
# A failing command on the left of a pipe must fail the build (the constraints below are made by a pipe).
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# No dependency may make pip replace the base's torch (with a build for another CUDA, or gigabytes more).
# onnxruntime-gpu is pinned with it: its CUDA major must stay the base's (see the top). It also runs on
# CPUs, so both variants install the same [onnx] extra; never add plain onnxruntime beside it.
RUN pip list --format=freeze | grep -iE '^(torch|torchvision)==' > /etc/pip-constraints.txt \
 && echo "onnxruntime-gpu==${ORT_VERSION}" >> /etc/pip-constraints.txt
ENV PIP_CONSTRAINT=/etc/pip-constraints.txt
# Dependencies before the source: this layer is rebuilt only when pyproject.toml's dependency lists change.
RUN --mount=type=bind,from=wheel,source=/requirements.txt,target=/tmp/requirements.txt \
    pip install -r /tmp/requirements.txt
RUN --mount=type=bind,from=wheel,source=/wheels,target=/tmp/wheels \
    pip install --no-deps /tmp/wheels/*.whl

# Non-root. /models holds the weights and the ONNX export cache; a new named volume mounted there takes this
# ownership, so the worker can write its exports.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin lsmseg \
 && mkdir -p /models && chown lsmseg:lsmseg /models
USER 10001
WORKDIR /home/lsmseg
ENV LSMSEG_HOST=0.0.0.0 LSMSEG_PORT=8000 LSMSEG_ONNX_CACHE_DIR=/models/onnx-cache
EXPOSE 8000
# Liveness only: /healthz answers within seconds of start and stays 200 while the model loads (readiness is
# /readyz). Python's urllib: no curl in the image.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "lsmseg.service.probe", "/healthz"]
CMD ["python", "-m", "lsmseg.service"]
