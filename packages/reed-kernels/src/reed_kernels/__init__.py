"""REED's speed kernels for SiT-shaped transformers (used by reed-image's ``FusedSiT``).

Each module is self-contained; import the one you need:

* ``fused_adaln``: ``add_norm_modulate``, the adaLN-Zero residual add + LayerNorm + modulate as
  Triton custom ops with a hand-written backward.
* ``fused_mlp``: ``mlp_gelu``, the MLP with its GELU in cuBLASLt GEMM epilogues.
* ``cublaslt_linear``: ``cublaslt_linear``, ``F.linear`` through autotuned cuBLASLt GEMMs.
* ``flash_attention``: ``packed_attention``, attention on a packed qkv (cuDNN forward,
  FlashAttention-4 backward writing the packed gradient; extra ``fa4``).
* ``attention_prepost``: Triton pre/postprocess of that backward, forming the qkv bias gradient.
* ``cublaslt``: the ctypes cuBLASLt binding (plans, autotuning inside CUDA graphs);
  ``cublaslt_plans``: plan files.

Off CUDA (or without Triton / cuBLASLt / FlashAttention-4 where a path needs them) every op runs
its PyTorch reference, so the same code runs on a CPU. No module has settings to change at run
time: choices are arguments, and defaults are the measured winners (README.md).
"""
