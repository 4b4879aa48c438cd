# syntax=docker/dockerfile:1
# The Triton server with our model repository, on NVIDIA's NGC container.
# Triton 2.51.0 (the server the project is tested against) is NGC release 24.10: Ubuntu 22.04,
# Python 3.10, CUDA 12.6. Build from the repository root:
#   docker build -f docker/triton.Dockerfile -t sd-img2img-triton .
#   docker build -f docker/triton.Dockerfile --build-arg MODEL_ID=stable-diffusion-v1-5/stable-diffusion-v1-5 ...
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3
FROM ${TRITON_IMAGE}

# CUDA build of torch matching the container's CUDA 12.x; the rest pinned as in pyproject.toml.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
COPY docker/requirements-triton.txt /opt/sd/requirements-triton.txt
RUN pip install --no-cache-dir --extra-index-url "${TORCH_INDEX_URL}" -r /opt/sd/requirements-triton.txt

COPY model_repository /models
COPY docker/triton_canary.py /opt/sd/triton_canary.py

# Weights: mount a diffusers folder at /weights (compose/k8s do), or download one at build time.
ARG MODEL_ID=
ENV SD_MODEL_PATH=/weights HF_HUB_OFFLINE=1
RUN if [ -n "${MODEL_ID}" ]; then \
      HF_HUB_OFFLINE=0 python3 -c "import sys; from huggingface_hub import snapshot_download; \
snapshot_download(sys.argv[1], local_dir='/weights', allow_patterns=['*.json', '*.txt', '*.fp16.safetensors', \
'scheduler/*', 'tokenizer/*'])" "${MODEL_ID}"; \
    fi

EXPOSE 8000 8001 8002
HEALTHCHECK --interval=30s --timeout=35s --start-period=300s --retries=3 \
  CMD python3 /opt/sd/triton_canary.py --url 127.0.0.1:8000 --timeout 20 --stall 300 || exit 1
# No instance_group in config.pbtxt: one KIND_GPU instance per visible GPU (fp16).
CMD ["tritonserver", "--model-repository=/models", "--strict-readiness=true", "--exit-on-error=true", \
     "--backend-config=python,shm-default-byte-size=16777216", \
     "--backend-config=python,shm-growth-byte-size=16777216"]
