"""Model FLOPs per token, achieved FLOP/s and MFU, against a GPU's datasheet peak or a measured CPU peak.

FLOPs follow the PaLM/nanoGPT estimate: 6 per parameter per token (forward + backward) for every
weight that does a matmul (the input embedding is a lookup, so it counts only when tied to the output
head), plus 12 * layers * width * sequence for attention scores and values.
"""

from __future__ import annotations

import time

import torch

# Dense bf16 tensor-core peaks (no sparsity), FLOP/s, matched against torch.cuda.get_device_name().
GPU_PEAK_BF16 = {
    "H200": 989e12,
    "H100 SXM": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "GH200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "A10G": 125e12,
    "A10": 125e12,
    "L40S": 362e12,
    "L4": 121e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
    "V100": 125e12,
    "T4": 65e12,
}


def flops_per_token(
    n_params: int, n_embed: int, tied: bool, n_layers: int, d_model: int, seq_len: int
) -> float:
    matmul_params = n_params if tied else n_params - n_embed
    return 6.0 * matmul_params + 12.0 * n_layers * d_model * seq_len


def gpu_peak_flops(device_name: str) -> float | None:
    """The datasheet bf16 peak of a known GPU, or None (then the peak is measured)."""
    for key in sorted(GPU_PEAK_BF16, key=len, reverse=True):
        if key.lower() in device_name.lower():
            return GPU_PEAK_BF16[key]
    return None


def measure_matmul_peak(
    device: torch.device, dtype: torch.dtype = torch.float32, n: int = 1024, seconds: float = 0.3
) -> float:
    """Best FLOP/s of square matmuls on this device with this process's threads: the CPU's 'peak'."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    flop = 2.0 * n**3
    best = 0.0
    torch.mm(a, b)  # warm up
    deadline = time.perf_counter() + seconds
    while True:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        best = max(best, flop / dt)
        if time.perf_counter() > deadline:
            return best


def device_peak_flops(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    """(peak FLOP/s of one device, where the number comes from)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = gpu_peak_flops(name)
        if peak is not None and dtype == torch.bfloat16:
            return peak, f"datasheet bf16 peak of {name}"
        return measure_matmul_peak(device, dtype, n=4096), f"measured matmul peak on {name}"
    return measure_matmul_peak(
        device, dtype
    ), f"measured matmul peak with {torch.get_num_threads()} thread(s)"
