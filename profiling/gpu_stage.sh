#!/usr/bin/env bash
# On the lent GPU machine (workplace tooling, see profiling/README.md): assemble the default GGUF from
# the parts carried in .gpu/m2 or .gpu/m3 (one part per call, the last call with smol.sha256 +
# .gpu/whl; three 33 MiB parts once the checkout passed ~15 MB), install the missing wheels and
# samgpu itself (editable, so samgpu.kernels maps to kernels/). Source it:
#   source profiling/gpu_stage.sh && python -m pytest ...
set -eo pipefail
mkdir -p /root/models
for p in .gpu/m?/p0?; do [ -f "$p" ] && cp "$p" /root/models/; done
GGUF=/root/models/SmolLM2-135M-Instruct.Q4_1.gguf
SHA=$(ls .gpu/m?/smol.sha256 2>/dev/null | head -1 || true)
if [ ! -f "$GGUF" ] && [ -n "$SHA" ]; then
  cat /root/models/p0? > "$GGUF"
  echo "$(cat "$SHA")  $GGUF" | sha256sum -c - || { rm -f "$GGUF"; echo "GGUF parts missing"; }
fi
export SAMGPU_DEFAULT_GGUF=$GGUF SAMGPU_CACHE=/root/samgpu-cache PYTHONUNBUFFERED=1
if [ -d .gpu/whl ] && [ ! -d /tmp/site ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 \
  || { echo "editable install failed: linking samgpu/kernels"; ln -sfn ../kernels samgpu/kernels; }
nvidia-smi --query-gpu=name,driver_version,power.limit,memory.total --format=csv,noheader || true
ls -la /root/models
