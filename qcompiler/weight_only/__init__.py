"""Weight-only low-bit quantization: the weights of linear layers and embeddings in 2, 4 or 8-bit blocks,
activations left in float (the way transformer LLMs are quantized).

* :mod:`.layers` — which weights are quantized (MatMul/Gemm with a constant 2-D weight, Gather of a
  constant embedding table), the scheme of a bit width / block size / symmetry, RTN (round to nearest:
  the min/max spec of every block), and storing a quantized weight on the model;
* :mod:`.hqq` — Half-Quadratic Quantization (Badri & Shaji 2023), calibration-free;
* :mod:`.activations` — samples of each layer's input tokens from calibration data (onnxruntime);
* :mod:`.awq` — Activation-aware Weight Quantization (Lin et al. 2024);
* :mod:`.gptq` — GPTQ (Frantar et al. 2023);
* :mod:`.matmulnbits` — lowering to onnxruntime's ``com.microsoft::MatMulNBits``.

Every algorithm returns a weight on the quantization grid of its spec (``fake_quantize(W, spec) == W``),
so the same integers come out of either output form: ``MatMulNBits`` or the standard blocked
``DequantizeLinear`` (opset 21) + MatMul that ``insert-qdq`` / ``fold-quantized-weights`` write.
"""
