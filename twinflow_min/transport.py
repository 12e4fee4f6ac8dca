"""The linear (rectified-flow / OT) transport used by TwinFlow, RCGM and UCGM.

Paper: TwinFlow (arXiv:2512.05150), Sec. 2 (flow matching background); derivation in
docs/math.md#time-convention and docs/math.md#inversion. Faithful to the official TwinFlow code
(`tutorials/mnist/methodes.py` and `src/methodes/twinflow/twinflow.py`: `alpha_in` / `gamma_in`,
`prepare_inputs` and the `forward` inversion), written directly for the linear schedule; the
official `alpha/gamma` indirection with the hard-coded denominator `dent = -1` is the same algebra
(B14 in docs/math.md#official-differences).

Time convention (stated here once for the whole package; other files link to it):
x_t = (1 - t) * x + t * z, t = 1 is noise, t = 0 is data, negative t is the fake (twin) branch.
The network F(x_t, t, t_tgt) is the *average velocity* from time t to the target time t_tgt, so the
any-step jump is x_{t_tgt} = x_t - (t - t_tgt) * F. Time may be signed; the interpolation and the
inversion use |t| (the sign only tells the network which trajectory it is on).
"""

from __future__ import annotations

from torch import Tensor


def check_time(t: Tensor, name: str = "t") -> Tensor:
    """Raise a clear error unless `t` is a 1-D tensor with every |t| <= 1."""
    if not isinstance(t, Tensor) or t.dim() != 1:
        shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"{name} must be a 1-D tensor of shape (B,), got {shape}; "
                         f"pass one time per sample, e.g. torch.full((B,), 0.5)")
    if t.numel() and bool((t.abs() > 1).any()):
        raise ValueError(f"{name} must lie in [-1, 1] (t = 1 is noise, negative t is the fake "
                         f"branch); got values from {t.min().item():.4g} to {t.max().item():.4g}")
    return t


def expand_time(t: Tensor, like: Tensor) -> Tensor:
    """View a per-sample time (B,) as (B, 1, ..., 1) so it broadcasts against `like` (B, ...)."""
    if t.shape[0] != like.shape[0]:
        raise ValueError(f"time has {t.shape[0]} entries but the batch has {like.shape[0]} samples")
    return t.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def interpolate(x: Tensor, z: Tensor, t: Tensor) -> Tensor:
    """x_t = (1 - |t|) * x + |t| * z  (docs/math.md#time-convention)."""
    t = expand_time(check_time(t), x).abs()
    return (1 - t) * x + t * z  # (B, ...)


def velocity_target(x: Tensor, z: Tensor) -> Tensor:
    """Conditional flow-matching velocity v = dx_t/dt = z - x  (docs/math.md#time-convention)."""
    return z - x


def invert(x_t: Tensor, F: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Data and noise estimates from a velocity: x_hat = x_t - |t| F, z_hat = x_t + (1 - |t|) F.

    Official `forward` (TUT, SRC); docs/math.md#inversion. With F = z - x it returns (x, z).
    """
    t = expand_time(check_time(t), x_t).abs()
    x_hat = x_t - t * F
    z_hat = x_t + (1 - t) * F
    return x_hat, z_hat


def jump(x_t: Tensor, F: Tensor, t: Tensor, t_tgt: Tensor) -> Tensor:
    """Any-step jump x_{t_tgt} = x_t - (|t| - |t_tgt|) F = (1 - |t_tgt|) x_hat + |t_tgt| z_hat.

    docs/math.md#inversion."""
    return x_t - expand_time(t.abs() - t_tgt.abs(), x_t) * F
