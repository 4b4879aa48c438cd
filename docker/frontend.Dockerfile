# syntax=docker/dockerfile:1
# The public API (aiohttp frontend): slim Python, non-root, no torch. Build from the repository root:
#   docker build -f docker/frontend.Dockerfile -t sd-img2img-frontend .
FROM python:3.11-slim

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin app \
 && mkdir -p /data && chown app:app /data
WORKDIR /app
# The frontend's dependencies only: the model extra (torch, diffusers, Triton) is not installed.
COPY pyproject.toml README.md ./
COPY frontend ./frontend
COPY embedded ./embedded
COPY bench ./bench
RUN pip install --no-cache-dir . && rm -rf /root/.cache

USER app
ENV SD_HOST=0.0.0.0 SD_PORT=8080 SD_DATA_DIR=/data SD_TRITON_URL=triton:8001 PYTHONUNBUFFERED=1
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=15s --start-period=20s --retries=3 \
  CMD python -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=5).status != 200)"
STOPSIGNAL SIGTERM
CMD ["python", "-m", "frontend"]
