"""What the GPU check's parts share besides the context: the row they report, the decoding constants, and the
numerics of the correctness checks (rounding limits, teacher-forced logits, comparing codes)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.gpu_setup import GIB
from lumina_core.decoding.logits import SamplingOptions, guide
from lumina_core.decoding.sampler import Session

SMALL = 128                   # the correctness image: 16x16 codes
WINDOW = 16                   # SJD window, as upstream
CFG = 4.0
GREEDY = SamplingOptions(cfg=CFG, top_k=1)
SAMPLED = SamplingOptions(cfg=CFG, top_k=4096)
NA_CPU = "n/a on CPU"


@dataclass
class Row:
    part: str
    id: str                   # stable name for scripts and tests
    check: str
    result: str
    limit: str = ""
    status: str = "measured"  # pass | FAIL | n/a | skipped | measured | error
    verdict: str = ""         # the table's last column: pass/FAIL, "n/a on CPU", or the measured figure


class BudgetSpent(Exception):
    """Raised by a check's guard once --budget-s is spent: the part stops and says so in a row."""


def size(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"


# ----------------------------------------------------------------------------- rounding
def unit_roundoff(dtype: torch.dtype) -> float:
    """Largest relative rounding error of one operation in `dtype` (bf16: 2^-8, float32: 2^-24)."""
    return torch.finfo(dtype).eps / 2


def kernel_error_limit(dtype: torch.dtype, k: int) -> float:
    """Max |error| / max |reference| a correct weight-only kernel may show against float32 dequantise-then-matmul.
    With u the activation dtype's unit roundoff: rounding the output (u), the dequant path's scale product (u),
    and int4's dequantised weights ((q - 8) * scale + zero rounded twice: <= 3u of the group's range per weight,
    which averages to under 2u of the largest output over K terms): 4u, with 2u to spare (measured on the CPU
    in bf16 at the 7B shapes: <= 1.4u). Plus float32 accumulation in kernel and reference, each within K
    roundings of 2^-24 (the textbook worst case, so any CPU's blocking fits). A wrong nibble, group or scale
    row is off by 10% or more."""
    return 6 * unit_roundoff(dtype) + 2 * k * 2.0**-24


# ----------------------------------------------------------------------------- teacher forcing
def forced_guided_logits(model, plan, special, codes: torch.Tensor, chunk: int = 1, forward=None) -> torch.Tensor:
    """Guided image-code logits at every code of `plan` while `codes` [rows, w] are fed (teacher forcing),
    `chunk` tokens per forward: [rows * w, n_codes] float32. chunk=1 and chunk=16 are equal in exact
    arithmetic; their difference is the rounding noise of two equivalent GEMM shapes."""
    lay, dev = plan.layout, model.device
    row_ends = torch.full((lay.gen_rows, 1), special.row_end, dtype=torch.long, device=dev)
    body = torch.cat([codes + special.image_code_start, row_ends], 1).flatten()
    next_is_code = torch.ones(lay.gen_rows, lay.w_lat + 1, dtype=torch.bool, device=dev)
    next_is_code[:, -1] = False
    next_is_code = next_is_code.flatten()[1:]          # for fed token j: is position j + 1 a code?
    fed = body[:-2]                                     # up to the token before the last code
    out = torch.empty(codes.numel(), special.num_image_codes, device=dev)
    session = Session(model, plan, 1, True, forward=forward)
    with torch.inference_mode():
        logits = session.prefill(special.image_rows)
        out[0] = guide(logits[:1], logits[1:], CFG)[0]
        n = 1
        for a in range(0, fed.numel(), chunk):
            step = session.step(fed[None, a:a + chunk], special.image_rows, last_only=False)
            guided = guide(step[:1], step[1:], CFG)[0]
            keep = next_is_code[a:a + step.shape[1]]
            k = int(keep.sum())
            out[n:n + k] = guided[keep]
            n += k
    return out


@dataclass
class Forced:
    """Teacher-forced guided logits along some codes, and their rounding noise."""
    codes: torch.Tensor       # [rows, w]
    logits: torch.Tensor      # [rows * w, n_codes] guided logits, one token per forward
    noise: torch.Tensor       # [rows * w] per position: max over codes of |logits(1 token) - logits(16 tokens)|

    def shortfall(self) -> torch.Tensor:
        """Per position: how far the fed code's logit is below the best one (0: it is the greedy choice)."""
        return self.logits.amax(-1) - self.logits.gather(-1, self.codes.flatten()[:, None])[:, 0]


def first_difference(got: torch.Tensor, want: torch.Tensor) -> tuple[int, int]:
    """(codes equal, index of the first difference or -1)."""
    got, want = got.flatten(), want.flatten()
    differ = (got != want).nonzero()
    return int((got == want).sum()), int(differ[0]) if differ.numel() else -1
