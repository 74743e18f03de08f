"""The parameter update of one training step, fused: gradient clipping, AdamW and the EMA.

The reference update is three sweeps over every parameter-sized fp32 tensor:
``clip_grad_norm_`` (read the gradients for the norm, then scale them in place),
``AdamW.step`` (read ``theta, g, m, v``; write ``theta, m, v``) and the EMA (read ``theta_ema,
theta``; write ``theta_ema``): about 52 bytes of memory traffic per parameter. Written as one
chain of ``torch._foreach_*`` ops and compiled, inductor fuses it into a few horizontally batched
kernels that read ``theta, g, m, v, theta_ema`` once and write ``theta, m, v, theta_ema`` once
(about 40 bytes per parameter, plus the norm's read of ``g``). For SiT-XL/2 (675 M parameters)
that is a few milliseconds of an H100 step.

With step count ``t``, learning rate ``lr``, clip coefficient ``c`` and EMA rate ``r = 1 - decay``
(exactly ``torch.optim.AdamW`` with ``amsgrad=False``, then ``torch.lerp``):

    g        = c * grad,                       c = min(1, max_norm / (||grad||_2 + 1e-6))
    m        = beta1 m + (1 - beta1) g
    v        = beta2 v + (1 - beta2) g^2
    theta    = theta (1 - lr wd) - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
    theta_ema = theta_ema + r (theta - theta_ema)

The moments live in a ``torch.optim.AdamW``'s ``state`` in its own format, so checkpoints are
the same whichever update ran, and a run may resume with the other one.

Low-precision parameters (``train.speed.param_dtype=bfloat16``): the model holds bf16 ``theta_bf16``
that the forward uses without casting, and its gradients come out in bf16. ``FusedUpdate`` then
keeps float32 master weights ``theta`` and applies the equations above to them (``g`` taken to
float32), the EMA included, and ends the same pass with ``theta_bf16 = bf16(theta)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def clip_coefficient(grads: Sequence[torch.Tensor], max_norm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(||g||_2, c)`` with ``c = min(1, max_norm / (||g||_2 + 1e-6))``, both 0-d, on the device.

    The norm is that of :func:`torch.nn.utils.clip_grad_norm_` (in float32 for bf16 gradients);
    no host synchronisation.
    """
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float32)))
    return total, torch.clamp(max_norm / (total + 1e-6), max=1.0)


def ema_update_(ema_params: list[torch.Tensor], params: list[torch.Tensor], rate: torch.Tensor) -> None:
    """``theta_ema += r (theta - theta_ema)`` in place, ``r`` a 0-d device tensor.

    (``torch._foreach_lerp_`` takes its weight as a host number only: given a tensor it reads it
    back, a host sync that would also break a CUDA-graph capture of the uncompiled update.)
    """
    delta = torch._foreach_sub(params, ema_params)
    torch._foreach_mul_(delta, rate)
    torch._foreach_add_(ema_params, delta)


def adamw_ema_update_(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    ema_params: list[torch.Tensor],
    step: torch.Tensor,
    lr: torch.Tensor,
    grad_coef: torch.Tensor,
    ema_rate: torch.Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    param_copies: list[torch.Tensor] | None = None,
) -> None:
    """One AdamW step then one EMA step, in place (the module docstring's equations).

    ``step`` (the new step count ``t``, >= 1), ``lr``, ``grad_coef`` (``c``) and ``ema_rate``
    (``r``) are 0-d fp32 tensors on the parameters' device, so one compiled graph serves every
    step of a schedule without recompiling. ``params`` are float32; ``grads`` may be bf16.
    ``param_copies`` (the model's bf16 parameters, when ``params`` are their master weights)
    receive the updated ``params``, rounded.
    """
    if any(grad.dtype != param.dtype for grad, param in zip(grads, params)):
        grads = [grad.to(param.dtype) for grad, param in zip(grads, params)]
    g = torch._foreach_mul(grads, grad_coef)
    torch._foreach_lerp_(exp_avgs, g, 1.0 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, g, g, 1.0 - beta2)
    step_size = lr / (1.0 - torch.pow(beta1, step))
    bias2_sqrt = torch.sqrt(1.0 - torch.pow(beta2, step))
    denom = torch._foreach_div(torch._foreach_sqrt(exp_avg_sqs), bias2_sqrt)
    torch._foreach_add_(denom, eps)
    if weight_decay:
        torch._foreach_mul_(params, 1.0 - lr * weight_decay)
    update = torch._foreach_div(exp_avgs, denom)
    torch._foreach_mul_(update, step_size)
    torch._foreach_sub_(params, update)
    ema_update_(ema_params, params, ema_rate)
    if param_copies is not None:
        torch._foreach_copy_(param_copies, params)


class FusedUpdate:
    """Clip + AdamW + EMA for ``optimizer``'s parameters and their ``ema_params``, in one pass.

    ``optimizer`` is a ``torch.optim.AdamW`` (one parameter group, ``amsgrad=False``): it holds
    the hyperparameters and the moments, in its usual ``state_dict`` format; its ``step()`` is not
    called. ``compile=True`` compiles :func:`adamw_ema_update_` (on CUDA: fused Triton kernels).
    ``master_params`` (float32, one per optimizer parameter) make the optimizer's parameters
    low-precision copies: the update runs on the masters and rounds them into the parameters;
    the moments are float32 either way.
    """

    def __init__(
        self,
        optimizer: torch.optim.AdamW,
        ema_params: Sequence[torch.Tensor],
        max_grad_norm: float = 0.0,
        compile: bool = False,
        master_params: Sequence[torch.Tensor] | None = None,
    ):
        if len(optimizer.param_groups) != 1:
            raise ValueError("FusedUpdate: expected one parameter group")
        group = optimizer.param_groups[0]
        if group.get("amsgrad") or group.get("maximize"):
            raise ValueError("FusedUpdate: amsgrad / maximize are not supported")
        self.optimizer = optimizer
        self.params: list[torch.Tensor] = list(group["params"])
        self.ema_params = list(ema_params)
        if len(self.ema_params) != len(self.params):
            raise ValueError(
                f"FusedUpdate: {len(self.params)} parameters but {len(self.ema_params)} EMA parameters"
            )
        self.master_params = list(master_params) if master_params is not None else None
        if self.master_params is not None:
            bad = [
                i
                for i, (m, p) in enumerate(zip(self.master_params, self.params))
                if m.shape != p.shape or m.dtype != torch.float32
            ]
            if len(self.master_params) != len(self.params) or bad:
                raise ValueError(
                    "FusedUpdate: master_params must be float32 tensors shaped as the optimizer's "
                    f"{len(self.params)} parameters (mismatch at {bad[:3]})"
                )
        self.max_grad_norm = float(max_grad_norm)
        device = self.params[0].device
        self._lr = torch.zeros((), device=device)
        self._ema_rate = torch.zeros((), device=device)
        self._one = torch.ones((), device=device)
        self._update: Callable[..., None] = (
            torch.compile(adamw_ema_update_, fullgraph=True) if compile else adamw_ema_update_
        )

    def _state(
        self, params: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """``step``, ``exp_avg``, ``exp_avg_sq`` of ``params`` in the optimizer's state (created as
        AdamW creates them; a step count loaded onto the CPU is moved to the parameter's device, so
        the update never reads host memory and can be captured in a CUDA graph)."""
        state = self.optimizer.state
        for p in params:
            if not state[p]:
                state[p]["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state[p]["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                state[p]["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
            elif state[p]["step"].device != p.device:
                state[p]["step"] = state[p]["step"].to(p.device, torch.float32)
        return (
            [state[p]["step"] for p in params],
            [state[p]["exp_avg"] for p in params],
            [state[p]["exp_avg_sq"] for p in params],
        )

    def set_rates(self, lr: float, ema_decay: float) -> None:
        """This step's learning rate and EMA decay, written into the device scalars that
        :meth:`apply` reads (host work: call it outside a captured CUDA graph)."""
        self.optimizer.param_groups[0]["lr"] = lr
        self._lr.fill_(lr)
        self._ema_rate.fill_(1.0 - ema_decay)

    @torch.no_grad()
    def apply(self) -> torch.Tensor | None:
        """Update parameters and EMA from the current gradients at the rates of the last
        :meth:`set_rates`; returns ``||g||`` when clipping. Device work only: no host reads or
        syncs, so a CUDA graph may capture it."""
        group = self.optimizer.param_groups[0]
        # as AdamW does, a parameter without a gradient is not stepped; its EMA still moves
        chosen = [i for i, p in enumerate(self.params) if p.grad is not None]
        idle = [i for i, p in enumerate(self.params) if p.grad is None]
        weights = self.master_params if self.master_params is not None else self.params
        if idle:
            ema_update_([self.ema_params[i] for i in idle], [weights[i] for i in idle], self._ema_rate)
        if not chosen:
            return None
        params = [self.params[i] for i in chosen]
        ema_params = [self.ema_params[i] for i in chosen]
        grads = [p.grad for p in params]
        grad_norm = None
        grad_coef = self._one
        if self.max_grad_norm > 0:
            grad_norm, grad_coef = clip_coefficient(grads, self.max_grad_norm)
        steps, exp_avgs, exp_avg_sqs = self._state(params)
        torch._foreach_add_(steps, 1.0)
        beta1, beta2 = group["betas"]
        self._update(
            [weights[i] for i in chosen],
            grads,
            exp_avgs,
            exp_avg_sqs,
            ema_params,
            steps[0].to(self._lr.device, torch.float32),
            self._lr,
            grad_coef,
            self._ema_rate,
            beta1,
            beta2,
            group["eps"],
            group["weight_decay"],
            params if self.master_params is not None else None,
        )
        return grad_norm

    def step(self, lr: float, ema_decay: float) -> torch.Tensor | None:
        """:meth:`set_rates` then :meth:`apply`: one update at ``lr`` and ``ema_decay``."""
        self.set_rates(lr, ema_decay)
        return self.apply()
