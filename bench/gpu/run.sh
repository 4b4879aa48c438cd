#!/usr/bin/env bash
# The GPU report in one command, on a machine with an NVIDIA GPU and a CUDA torch in `python3`:
#   bash bench/gpu/run.sh [bench.gpu arguments, e.g. --phases e2e,speed --design conv2d:1]
# Installs what .gpu/ carries (make gpu-carry), builds the full-size random SD 1.5 on the GPU (and, for
# the sdxl phase, SDXL base: never carried), runs python -m bench.gpu, and writes $OUT/gpu-report.json
# (after every figure), its log and gpu.md.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-.build/gpu}
PY=${PYTHON:-python3}
CARRY=${GPU_CARRY:-.gpu}
SITE=${GPU_SITE:-/tmp/sd-gpu/site}
STUB_SITE=${GPU_STUB_SITE:-/tmp/sd-gpu/stub-site}
MODEL=${GPU_MODEL_DIR:-/tmp/sd-gpu/sd15-random}
SDXL_MODEL=${GPU_SDXL_MODEL_DIR:-/tmp/sd-gpu/sdxl-random}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/run.log") 2>&1

if [ -f "$CARRY/triton.tar.xz" ]; then
    echo "installing $CARRY into $SITE ..."
    mkdir -p "$SITE" "$STUB_SITE"
    pip_install() { "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$@"; }
    pip_install "$SITE" "$CARRY"/wheels/*.whl || exit 1
    pip_install "$STUB_SITE" "$CARRY"/stub-wheels/*.whl || exit 1
    tar -C "$SITE" -xJf "$CARRY/triton.tar.xz" || exit 1
    export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

# The 3.12 stub links libpython3.12.so: where the interpreter keeps it, or anywhere on the machine.
STUB=$("$PY" -c 'import pytriton, pathlib; print(pathlib.Path(pytriton.__file__).parent / "tritonserver/python_backend_stubs/3.12/triton_python_backend_stub")' 2>/dev/null)
LIBDIR=$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR") or "")')
if [ -n "$STUB" ] && LD_LIBRARY_PATH="$LIBDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ldd "$STUB" | grep -q "libpython.*not found"; then
    FOUND=$(find / -xdev -name 'libpython3.12*.so*' -not -path '/proc/*' 2>/dev/null | head -1)
    echo "libpython3.12 for the stub: ${FOUND:-not found}"
    [ -n "$FOUND" ] && export LD_LIBRARY_PATH="$(dirname "$FOUND")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
# What the stub's interpreter will import, in its order (its own numpy first): a failure shows here.
"$PY" - "$STUB_SITE" <<'CHECK' || true
import sys; sys.path.insert(0, sys.argv[1])
import numpy, torch, diffusers, transformers
print("stub-like imports:", numpy.__version__, torch.__version__, diffusers.__version__, transformers.__version__)
CHECK
PYTHONUNBUFFERED=1 "$PY" -m bench.gpu --model-path "$MODEL" --sdxl-model-path "$SDXL_MODEL" --out "$OUT" \
    --stub-python-path "$STUB_SITE" "$@"
status=$?
"$PY" -m bench.gpu.report "$OUT/gpu-report.json" --markdown "$OUT/gpu.md" || status=1
exit $status
