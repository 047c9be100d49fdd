"""Triton kernels for int8 and int4 weight-only matmuls at decode sizes: out = (x @ w.T) * scale.

x [M, K] in bf16/fp16/fp32 with M small (2 for one CFG step, 32 for an SJD window), w [N, K] int8,
scale [N]. Each program owns BLOCK_N output columns for BLOCK_M rows and streams its slice of w once,
converting int8 to the activation dtype in registers, so the weight bytes read per step are halved
against bf16 (torch's generic int8 paths read far more: measured ~170-300 GB/s on an H200, see
BENCHMARKS.md). Block sizes are autotuned per (rows bucket, N, K) on first use; on CPU
the same kernel runs under TRITON_INTERPRET=1 with a fixed configuration (that is how it is tested).
"""
from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # optional: only the CUDA int8 path uses it
    triton = None


def available(device: torch.device) -> bool:
    import os
    if triton is None:
        return False
    return torch.device(device).type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


if triton is not None:
    @triton.jit
    def _w8_matmul_kernel(x_ptr, w_ptr, s_ptr, o_ptr, M, N, K, stride_xm, stride_wn, stride_om,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        pid_n = tl.program_id(0)
        pid_m = tl.program_id(1)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + rk
            x = tl.load(x_ptr + rm[:, None] * stride_xm + kk[None, :],
                        mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)
            # [BLOCK_N, BLOCK_K] with K fastest: each row of w is read as one contiguous run (coalesced)
            w = tl.load(w_ptr + rn[:, None] * stride_wn + kk[None, :],
                        mask=(rn[:, None] < N) & (kk[None, :] < K), other=0)
            acc += tl.dot(x, tl.trans(w.to(x.dtype)))
        s = tl.load(s_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)
        out = acc * s[None, :]
        tl.store(o_ptr + rm[:, None] * stride_om + rn[None, :], out.to(o_ptr.dtype.element_ty),
                 mask=(rm[:, None] < M) & (rn[None, :] < N))

    _CONFIGS = [triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
                for n, k, w, s in [(16, 256, 4, 4), (32, 128, 4, 4), (32, 256, 4, 3), (64, 128, 4, 4),
                                   (16, 512, 4, 3), (32, 512, 8, 3), (64, 256, 8, 3), (128, 128, 8, 3)]]
    _w8_matmul_tuned = triton.autotune(configs=_CONFIGS, key=["BLOCK_M", "N", "K"])(_w8_matmul_kernel)


def w8_matmul(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, tune: bool | None = None) -> torch.Tensor:
    """(x @ w.T) * scale for x [..., K] (any float dtype), w [N, K] int8, scale [N]; output in x.dtype.
    tune: autotune block sizes (default on CUDA; the interpreter runs one fixed configuration)."""
    tune = x.is_cuda if tune is None else tune
    shape = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    M, K = x2.shape
    N = w.shape[0]
    out = torch.empty(M, N, device=x.device, dtype=x.dtype)
    block_m = 16 if M <= 16 else (32 if M <= 32 else 64)
    if tune:
        grid = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), triton.cdiv(M, block_m))  # noqa: E731
        _w8_matmul_tuned[grid](x2, w, scale, out, M, N, K, x2.stride(0), w.stride(0), out.stride(0),
                               BLOCK_M=block_m)
    else:
        _w8_matmul_kernel[(triton.cdiv(N, 32), triton.cdiv(M, block_m))](
            x2, w, scale, out, M, N, K, x2.stride(0), w.stride(0), out.stride(0),
            BLOCK_M=block_m, BLOCK_N=32, BLOCK_K=64)
    return out.view(*shape, N)


if triton is not None:
    @triton.jit
    def _w4_matmul_kernel(x_ptr, w_ptr, s_ptr, z_ptr, o_ptr, M, N, K, stride_xm, stride_wn, stride_sn, stride_om,
                          GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        # w [N, K/2] uint8: column 2j in the low nibble, 2j+1 in the high one; scale/zero [N, K/GROUP].
        # BLOCK_K divides GROUP, so one block sits in one group (one scale and zero per output column).
        pid_n = tl.program_id(0)
        pid_m = tl.program_id(1)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rj = tl.arange(0, BLOCK_K // 2)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + 2 * rj
            xmask = (rm[:, None] < M) & (kk[None, :] < K)
            x_even = tl.load(x_ptr + rm[:, None] * stride_xm + kk[None, :], mask=xmask, other=0.0)
            x_odd = tl.load(x_ptr + rm[:, None] * stride_xm + kk[None, :] + 1, mask=xmask, other=0.0)
            b = tl.load(w_ptr + rn[:, None] * stride_wn + (k0 // 2 + rj)[None, :],
                        mask=(rn[:, None] < N) & (kk[None, :] < K), other=0).to(tl.int32)
            g = k0 // GROUP
            s = tl.load(s_ptr + rn * stride_sn + g, mask=rn < N, other=0.0).to(tl.float32)
            z = tl.load(z_ptr + rn * stride_sn + g, mask=rn < N, other=0.0).to(tl.float32)
            lo = (((b & 15).to(tl.float32) - 8.0) * s[:, None] + z[:, None]).to(x_even.dtype)
            hi = (((b >> 4).to(tl.float32) - 8.0) * s[:, None] + z[:, None]).to(x_even.dtype)
            acc += tl.dot(x_even, tl.trans(lo))
            acc += tl.dot(x_odd, tl.trans(hi))
        tl.store(o_ptr + rm[:, None] * stride_om + rn[None, :], acc.to(o_ptr.dtype.element_ty),
                 mask=(rm[:, None] < M) & (rn[None, :] < N))


def w4_block_k(group: int) -> int | None:
    """The K block for a group size: a power of two >= 32 dividing the group (None: no kernel fits)."""
    for bk in (128, 64, 32):
        if group % bk == 0:
            return bk
    return None


def w4_matmul(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """x [..., K] @ dequant(w).T for Int4Linear's portable layout; output in x.dtype."""
    shape = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    M, K = x2.shape
    N = w.shape[0]
    group = K // scale.shape[1]
    block_k = w4_block_k(group)
    if block_k is None:
        raise ValueError(f"the int4 kernel needs a group size divisible by 32, got {group}")
    scale, zero = scale.contiguous(), zero.contiguous()
    out = torch.empty(M, N, device=x.device, dtype=x.dtype)
    block_m = 16 if M <= 16 else (32 if M <= 32 else 64)
    _w4_matmul_kernel[(triton.cdiv(N, 32), triton.cdiv(M, block_m))](
        x2, w, scale, zero, out, M, N, K, x2.stride(0), w.stride(0), scale.stride(0), out.stride(0),
        GROUP=group, BLOCK_M=block_m, BLOCK_N=32, BLOCK_K=block_k)
    return out.view(*shape, N)
