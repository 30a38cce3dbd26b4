"""LDDMM refinement (STalign-style): a smooth velocity field on the source, EM weights for matched
and background target pixels, a linear contrast fit, preconditioned gradient steps."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .affine import grid_points, sample_planar
from .errors import GalaInputError
from .events import ProgressCallback, ProgressEvent, StopPredicate, emit, stopped

ESTEP_START = 50  # iterations with fixed 0.5/0.5 match/background weights before the EM weights update


def default_a(xI: list) -> float:
    """Default smoothness scale: 1/8 of the source's longer extent (source units)."""
    return max(float(np.ptp(xI[0])), float(np.ptp(xI[1]))) / 8.0


# the automatic LDDMM step (AlignParams.epV=None): REFERENCE_STEP where the source raster's pixel is REFERENCE_PIXEL
# image pixels, scaled with the pixel's area. A step moves the velocity (in image pixels) by epV × the energy's gradient,
# which is per image pixel: with the same tissue in a k× finer image file the physical move per step is k² smaller
# (measured: the MERFISH DAPI reduced 2× instead of 4×, 25 µm warp: 12.4 → 11.6 µm with the fixed step, 4.3 µm with
# this one; the 37 in-repo validation cases' summed error 177.6 → 173.3 µm). Larger steps fit each cross-validation fold
# further, so each fold's fit keeps the field its held-out half scores best (pipeline._fold_fits): without that the
# engine's synthetic warp test (source pixel 4: step 40) over-fitted one fold and the warp was refused
REFERENCE_STEP, REFERENCE_PIXEL = 10.0, 2.0


def default_epV(xI: list) -> float:
    """LDDMM step for the source grid ``xI`` (:data:`REFERENCE_STEP` × (pixel / :data:`REFERENCE_PIXEL`)², the pixel
    the geometric mean of the grid's two spacings, in image pixels)."""
    pixel = math.sqrt(abs(float(xI[0][1] - xI[0][0]) * float(xI[1][1] - xI[1][0])))
    return REFERENCE_STEP * (pixel / REFERENCE_PIXEL) ** 2


def velocity_grid(xI: list, a: float, expand: float = 1.0) -> list[np.ndarray]:
    """Axes of the velocity grid: the source extent widened by ``expand``, spacing ``a / 2``."""
    axes = []
    for axis in xI:
        axis = np.asarray(axis, dtype=np.float64)
        centre, half = (axis[0] + axis[-1]) / 2.0, (axis[-1] - axis[0]) / 2.0 * expand
        grid = np.arange(centre - half, centre + half + 1e-9 * a, a / 2.0)
        if grid.size < 2:
            raise GalaInputError(
                f"a={a} is too large for a source extent of {2 * half:.4g}: the velocity grid would have "
                f"fewer than 2 samples per axis; reduce a (e.g. a={2 * half / 8:.3g})."
            )
        axes.append(grid)
    return axes


def smoothing_operator(xv: list[np.ndarray], a: float, p: float = 2.0) -> np.ndarray:
    """``LL = (1 + a² λ)^(2p)`` on the FFT grid of ``xv`` (λ: the discrete Laplacian's symbol)."""
    lam = 0.0
    freqs = []
    for axis in xv:
        d = float(axis[1] - axis[0])
        f = np.fft.fftfreq(axis.size, d=d)
        freqs.append(2.0 * (1.0 - np.cos(2.0 * np.pi * f * d)) / d**2)
    lam = freqs[0][:, None] + freqs[1][None, :]
    return (1.0 + a**2 * lam) ** (2.0 * p)


@dataclass
class LDDMMResult:
    v: torch.Tensor  # (nt, n_r, n_c, 2) velocities in source units, (row, col) components
    xv: list[np.ndarray]
    WM: torch.Tensor  # (H_J, W_J) match weights
    energy_history: list[list[float]] = field(default_factory=list)  # [E, E_M, E_R] per iteration
    contrast: tuple[float, float] = (0.0, 1.0)
    stopped: bool = False


def backward_shift(v: torch.Tensor, xv: list, XV: torch.Tensor | None = None) -> torch.Tensor:
    """``φ⁻¹ − id`` on the velocity grid ``xv``, channel-first (2, n_r, n_c), for velocities ``v`` (nt, n_r, n_c, 2).

    Semi-Lagrangian steps ``φ⁻¹ ← φ⁻¹ ∘ (id − v_t/nt)`` for t = 0 … nt−1, each one interpolation of the
    displacement at the grid's own points (a point meets the last time step first). The velocity grid is
    several times coarser than a target raster and ``v`` is smooth on its scale, so LDDMM and the point /
    image transforms integrate here once and interpolate the displacement where they need it.
    ``XV``: the grid's points (2, n_r, n_c), if already built.
    """
    if XV is None:
        XV = grid_points(xv, dtype=v.dtype, device=v.device).permute(2, 0, 1)
    shift = torch.zeros_like(XV)
    for vt in (v / v.shape[0]).permute(0, 3, 1, 2).unbind(0):
        shift = sample_planar(shift, xv, XV - vt) - vt
    return shift


def fit_contrast(AI: torch.Tensor, J: torch.Tensor, W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted least squares ``J ≈ c0 + Σ_k c_k·AI_k`` (no gradient): the target's channels from all source
    channels (one source channel per target channel when the counts match and there is one, else all of them
    for each target channel). Returns ``c0`` (C_J,) and ``c`` (C_J, C_I)."""
    with torch.no_grad():
        w = (W / W.sum().clamp_min(1e-12)).flatten()
        a = AI.flatten(1)  # (C_I, N)
        j = J.flatten(1)  # (C_J, N)
        ma, mj = a @ w, j @ w
        ac, jc = a - ma[:, None], j - mj[:, None]
        S = (ac * w) @ ac.T  # (C_I, C_I)
        B = (ac * w) @ jc.T  # (C_I, C_J)
        if a.shape[0] == j.shape[0] and a.shape[0] > 1:  # channel k to channel k, as before
            c = torch.diag(torch.diagonal(B) / torch.diagonal(S).clamp_min(1e-12))
        elif a.shape[0] == 1:  # one source channel: the ridge solve is a division (no LAPACK call per iteration)
            c = (B / (S * (1.0 + 1e-6)).clamp_min(1e-12)).T
        else:
            ridge = 1e-6 * torch.diagonal(S).mean().clamp_min(1e-12) * torch.eye(S.shape[0], dtype=S.dtype, device=S.device)
            c = torch.linalg.solve(S + ridge, B).T  # (C_J, C_I)
        return mj - c @ ma, c


def _apply_contrast(AI: torch.Tensor, c0: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``c0 + c·AI`` per target channel: (C_I, …) → (C_J, …) (a raster or a list of pixels)."""
    return c0.reshape(-1, *[1] * (AI.dim() - 1)) + torch.einsum("jk,k...->j...", c, AI)


def run_lddmm(
    I: torch.Tensor,
    xI: list,
    J: torch.Tensor,
    xJ: list,
    A: torch.Tensor,
    *,
    num_iterations: int = 200,
    a: float | None = None,
    nt: int = 3,
    p: float = 2.0,
    expand: float = 1.0,
    epV: float | None = 10.0,
    sigmaR: float = 5e4,
    sigmaM: float | None = None,
    sigmaB: float | None = None,
    muB: float | None = None,
    contrast: bool = True,
    v0: torch.Tensor | None = None,
    xv: list[np.ndarray] | None = None,
    patience: int = 0,
    tol: float = 1e-4,
    progress: ProgressCallback | None = None,
    should_stop: StopPredicate | None = None,
    repeat: int = 0,
    padding: str = "zeros",
    pixel_mask: torch.Tensor | None = None,
    checkpoint: Callable[[torch.Tensor], float] | None = None,
    checkpoint_every: int = 10,
    extend_to: int = 0,
    extend_gain: float = 0.0,
) -> LDDMMResult:
    """Optimise the velocity field ``v`` (``A`` fixed) so that ``I ∘ φ⁻¹ ∘ A⁻¹`` matches ``J``.

    ``a`` (source units) sets the smoothness scale and the velocity grid spacing ``a/2``; ``epV`` the
    gradient step (None: :func:`default_epV` of ``xI``); ``sigmaR`` the regularisation (larger = weaker); ``sigmaM``/``sigmaB`` the noise of
    matched/background pixels (default: the target's std); ``muB`` the background level (estimated
    every 10 iterations when None). A step that raises the energy is undone and ``epV`` halved.
    ``xv`` fixes the velocity grid (default: :func:`velocity_grid` of ``xI``), so a run on pooled rasters can
    hand its ``v`` to a full-resolution run as ``v0``. ``patience`` > 0 stops early once the energy fell by less than ``tol`` (relative) over the last
    ``patience`` iterations (0: run all ``num_iterations``). ``checkpoint``: a score of a velocity field (higher is
    better, e.g. the fit on pixels the matching term does not see), taken at the start, every ``checkpoint_every``
    iterations and at the end; the best-scoring field is returned (early stopping by validation: the fit stops
    where it starts to fit noise). ``extend_to`` > ``num_iterations`` (with a ``checkpoint``): while the last
    ``checkpoint_every`` iterations raised the checkpoint's score by more than ``extend_gain`` the fit goes on, up to
    ``extend_to`` iterations in all (a large warp still converging when the budget ends).
    """
    dtype, device = I.dtype, I.device
    if a is None:
        a = default_a(xI)
    if epV is None:
        epV = default_epV(xI)
    if not (a > 0 and epV > 0 and sigmaR > 0):
        raise GalaInputError("LDDMM parameters a, epV and sigmaR must be positive.")
    xv = velocity_grid(xI, a, expand) if xv is None else [np.asarray(axis, dtype=np.float64) for axis in xv]
    LL = torch.as_tensor(smoothing_operator(xv, a, p), dtype=dtype, device=device)
    K = 1.0 / LL
    dv = [float(axis[1] - axis[0]) for axis in xv]
    shape = (int(nt), xv[0].size, xv[1].size, 2)
    v = torch.zeros(shape, dtype=dtype, device=device) if v0 is None else v0.detach().clone().to(dtype)
    if tuple(v.shape) != shape:
        v = torch.zeros(shape, dtype=dtype, device=device)
    v.requires_grad_(True)
    Ainv = torch.linalg.inv(A)  # A is fixed here: pull J's grid back through it once
    start_points = (grid_points(xJ, dtype=dtype, device=device) @ Ainv[:2, :2].T + Ainv[:2, 2]).permute(2, 0, 1)
    start_points = start_points.contiguous()
    velocity_points = grid_points(xv, dtype=dtype, device=device).permute(2, 0, 1).contiguous()
    sigmaM = float(J.std()) if sigmaM is None else float(sigmaM)
    sigmaB = float(J.std()) if sigmaB is None else float(sigmaB)
    sigmaM, sigmaB = max(sigmaM, 1e-6), max(sigmaB, 1e-6)
    raster_shape = J.shape[1:]
    index = None
    if pixel_mask is not None:
        # only the mask's pixels (a validation fold, an outline band) enter the matching term: only they are
        # resampled and compared, as a list of pixels (a fold's fit does half the work of a whole-raster one)
        weights = pixel_mask.to(dtype).flatten()
        index = torch.nonzero(weights > 0).flatten()
        start_points = start_points.flatten(1)[:, index].contiguous()
        J = J.flatten(1)[:, index]
        fitted = weights[index]
    else:
        fitted = torch.ones(raster_shape, dtype=dtype, device=device)  # pixels the matching term sees
    WM = torch.full_like(fitted, 0.5)
    WB = 1.0 - WM
    mu_b = torch.zeros(J.shape[0], dtype=dtype, device=device) if muB is None else torch.full(
        (J.shape[0],), float(muB), dtype=dtype, device=device)
    reg_scale = math.prod(dv) / (shape[1] * shape[2]) / (2.0 * sigmaR**2)
    history: list[list[float]] = []
    if not contrast and I.shape[0] != J.shape[0]:
        raise GalaInputError(f"LDDMM without a contrast fit compares the rasters directly: it needs as many image "
                             f"as cell channels ({I.shape[0]} vs {J.shape[0]}); set contrast=True.")
    c0 = torch.zeros(J.shape[0], dtype=dtype, device=device)
    c1 = torch.eye(J.shape[0], I.shape[0], dtype=dtype, device=device)  # identity contrast until the first fit
    step = float(epV)
    prev_energy = math.inf
    prev_v = v.detach().clone()
    was_stopped = False

    def energies(vel: torch.Tensor):
        """Total, matching (differentiable in ``vel``) and regularisation energies, and the deformed source."""
        X = start_points + sample_planar(backward_shift(vel, xv, velocity_points), xv, start_points)
        AI = sample_planar(I, xI, X, padding=padding)
        fAI = _apply_contrast(AI, c0, c1)
        EM = (fitted * WM * (fAI - J) ** 2).sum() / (2.0 * sigmaM**2)
        with torch.no_grad():  # its gradient is in closed form (below): no autograd through the FFT
            vhat = torch.fft.fftn(vel, dim=(1, 2))
            ER = ((vhat.real.square() + vhat.imag.square()) * LL[None, :, :, None]).sum() * reg_scale
        return EM + ER, EM, ER, AI

    # ER = reg_scale·Σ LL·|v̂|², so ∂ER/∂v = 2·N·reg_scale·ifft(LL·v̂) and, preconditioned by K = 1/LL, simply
    # 2·N·reg_scale·v (N = velocity grid points; torch's unnormalised forward FFT)
    reg_grad_scale = 2.0 * shape[1] * shape[2] * reg_scale

    best_check, best_v = (checkpoint(v.detach()), v.detach().clone()) if checkpoint is not None else (None, None)
    total = max(int(num_iterations), int(extend_to)) if checkpoint is not None else int(num_iterations)
    last_check = best_check
    for it in range(total):
        with torch.no_grad():
            if muB is None and it % 10 == 0:
                mu_b = (WB * J).flatten(1).sum(1) / WB.sum().clamp_min(1e-12)
        E, EM, ER, AI = energies(v)
        if not torch.isfinite(E):
            raise GalaInputError(
                f"LDDMM diverged at iteration {it} (energy is not finite); lower epV (now {epV}) or raise sigmaR."
            )
        if E.item() > prev_energy * (1 + 1e-6) and it > 0:
            with torch.no_grad():  # undo the last step and take a smaller one next time
                v.copy_(prev_v)
            step *= 0.5
            E, EM, ER, AI = energies(v)
        v.grad = None
        EM.backward()
        history.append(torch.stack([E, EM, ER]).tolist())  # one device → host copy per iteration
        prev_energy = history[-1][0]
        # past the budget the events count towards extend_to (one new total, not one per step: a progress bar keyed on
        # it would restart every iteration)
        shown = int(num_iterations) if it < int(num_iterations) else total
        emit(progress, ProgressEvent("lddmm", it + 1, shown, history[-1][0], None, repeat,
                                     {"matching": history[-1][1], "regularisation": history[-1][2], "step": step}))
        with torch.no_grad():
            prev_v = v.detach().clone()
            grad = torch.fft.ifftn(torch.fft.fftn(v.grad, dim=(1, 2)) * K[None, :, :, None], dim=(1, 2)).real
            v -= step * (grad + reg_grad_scale * v)
            AI = AI.detach()
            if contrast:
                c0, c1 = fit_contrast(AI, J, WM * fitted)
            residual = (_apply_contrast(AI, c0, c1) - J) ** 2  # the field before this step, under the new contrast
            if it >= ESTEP_START:  # E-step, in log space
                n = WM.numel()
                log_pm = math.log(max(float(WM.sum()) / n, 1e-12))
                log_pb = math.log(max(float(WB.sum()) / n, 1e-12))
                lm = log_pm - residual.sum(0) / (2 * sigmaM**2) - J.shape[0] * math.log(sigmaM)
                lb = log_pb - ((J - mu_b.reshape(-1, *[1] * (J.dim() - 1))) ** 2).sum(0) / (2 * sigmaB**2) - J.shape[0] * math.log(sigmaB)
                WM = torch.softmax(torch.stack([lm, lb]), 0)[0]
                WB = 1.0 - WM
            # the field before this step, scored with the contrast and weights the next iteration uses: the step is
            # kept only if it does not raise that (with the weights changing every iteration, a comparison across
            # them was not possible and steps went unchecked from ESTEP_START on: a pair that matched exactly
            # diverged, its energy ×7 per iteration)
            prev_energy = float((fitted * WM * residual).sum() / (2.0 * sigmaM**2) + history[-1][2])
        if checkpoint is not None and ((it + 1) % checkpoint_every == 0 or it + 1 in (int(num_iterations), total)):
            score = checkpoint(v.detach())
            if score > best_check:
                best_check, best_v = score, v.detach().clone()
            gained, last_check = score - last_check, score
            if it + 1 >= int(num_iterations) and not gained > extend_gain:
                break  # the budget is spent and the held-out fit no longer rises clearly
        if stopped(should_stop):
            was_stopped = True
            break
        first = it - patience  # compare energies of the same weights: not across the E-steps' start
        # past the budget only the checkpoint's rise keeps the fit going (above)
        if patience and first >= 0 and it + 1 < int(num_iterations) and (it <= ESTEP_START or first > ESTEP_START) and (
            history[first][0] - history[it][0] < tol * abs(history[first][0])
        ):
            break  # energy plateau (early stop, not a user stop)
    if checkpoint is not None:  # the field the checkpoint scored best (an early stop ends between checkpoints)
        with torch.no_grad():
            v.copy_(best_v)
    if index is not None:  # the weights as a raster: 0 where the fit never looked
        WM = torch.zeros(math.prod(raster_shape), dtype=dtype, device=device).index_copy_(0, index, WM.detach())
        WM = WM.reshape(raster_shape)
    return LDDMMResult(v.detach(), xv, WM.detach(), history, (c0.tolist(), c1.tolist()), was_stopped)
