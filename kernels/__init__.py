"""samgpu.kernels: Triton kernels, one family per module, each with its PyTorch reference beside it.

Installed as `samgpu.kernels` (never as a top-level `kernels` module: that name is Hugging Face's
kernel-hub package, which transformers probes). Depends on torch and triton only.

Every family `<op>` exposes `<op>` (dispatching entry point), `<op>_triton` and `<op>_ref`;
backend choice lives in `_dispatch.py` alone.
"""
