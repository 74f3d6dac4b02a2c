"""Null-text optimization (Mokady et al. 2023): one unconditional embedding per step, tuned so that
guided DDIM sampling from z_T retraces the DDIM-inversion trajectory.

Several photos are optimized together in one UNet batch; each keeps its own embedding, its own
Adam state and its own early stop.

The model's weights are frozen for the call (``models.frozen.with_frozen_weights``): the backward
pass then computes gradients for the embeddings only, and every ``requires_grad`` flag is put back
afterwards, also when the optimization raises. The alternative, ``torch.autograd.grad`` with the
embeddings as the only inputs and the weights left trainable, also skips the weight gradients and
took the same time (tiny model, 50 × 10, three interleaved runs on a busy CPU: 66–85 s frozen,
79–83 s autograd.grad, 108–123 s trainable with ``backward``), but it keeps more memory: on SD
1.5's UNet at 512 px a one-inner-step optimization peaked 1741 MiB above its start frozen, 2049
MiB with autograd.grad and 4690 MiB with ``backward``, because a forward pass through trainable
weights also saves each layer's input for the weight gradient. Both gave the same embeddings, bit
for bit.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from inversion.ddim import ddim_prev, predicted_noise
from models.codec import check_finite
from models.conditioning import Conditioning, as_conditioning, unet_output
from models.frozen import with_frozen_weights

# On SDXL, whether the pooled unconditional embedding [1, 1280] is optimized along with the
# per-token one [77, 2048]: decided by measured reconstruction on tiny-xl (docs/benchmarks.md).
OPTIMIZE_POOLED = True


class InversionError(RuntimeError):
    """The inversion could not be completed; the message says what to change."""


@with_frozen_weights
def null_text_optimization(
    pipe,
    trajectory: torch.Tensor,
    cond: torch.Tensor | Conditioning,
    uncond: torch.Tensor | Conditioning,
    num_steps: int,
    guidance_scale: float = 7.5,
    num_inner_steps: int = 10,
    early_stop_epsilon: float = 1e-5,
    progress: bool = False,
    counts: dict | None = None,
    on_step: Callable[[int, int], None] | None = None,
    optimize_pooled: bool | None = None,
) -> tuple[torch.Tensor | Conditioning, dict]:
    """Optimize the per-step null embeddings.

    The pipeline's weights are frozen during the call and no gradient reaches them or the
    tensors passed in; the embeddings are the only thing optimized.

    Args:
        trajectory: DDIM-inversion latents [T+1, N, 4, h, w] (z_0 … z_T).
        cond: the source prompts' embeddings [N, 77, d]; on SDXL a ``Conditioning`` (embeds
            [N, 77, 2048], pooled [N, 1280], time ids [N, 6]).
        uncond: the empty prompt's embedding [1, 77, d], the start at step 0; on SDXL a
            ``Conditioning`` (embeds [1, 77, 2048], pooled [1, 1280]; its rows take cond's time ids).
        counts: optional dict whose "unet_forward" and "unet_backward" entries are incremented.
        on_step: called after each DDIM step's optimization with (steps done, num_steps); it may
            raise to stop the optimization between steps (cooperative cancellation).
        optimize_pooled: SDXL only: optimize the pooled unconditional embedding too (default
            ``OPTIMIZE_POOLED``); otherwise it stays at ``uncond.pooled`` for every step.

    Returns:
        (null_embeddings [T, N, 77, d] in float32 (float64 if the model is), stats) where stats
        holds per step the final loss and the inner steps taken, per item, and "latent_error",
        the MSE between the guided reconstruction's last latent and z_0 per item. On SDXL the
        null embeddings are a ``Conditioning``: embeds [T, N, 77, 2048], pooled [T, N, 1280].

    Raises:
        InversionError: the loss became NaN or infinite (typically fp16 overflow).
        NonFiniteError: the guided latent became NaN or infinite.
    """
    counts = counts if counts is not None else {}
    counts.setdefault("unet_forward", 0)
    counts.setdefault("unet_backward", 0)
    scheduler = pipe.scheduler
    scheduler.set_timesteps(num_steps, device=pipe.device)
    unet, dtype = pipe.unet, pipe.unet.dtype
    work = torch.promote_types(dtype, torch.float32)  # embeddings and loss never in fp16/bf16
    n = trajectory.shape[1]
    trajectory, cond, uncond = trajectory.detach(), cond.detach(), uncond.detach()  # gradients for the embeddings only
    cond = cond.to(pipe.device, dtype)
    xl = isinstance(uncond, Conditioning)
    optimize_pooled = OPTIMIZE_POOLED if optimize_pooled is None else optimize_pooled
    if xl:
        time_ids = as_conditioning(cond).time_ids
        pooled = [uncond.pooled.to(pipe.device, work).clone() for _ in range(n)]
        pooled_results = torch.empty(num_steps, n, *uncond.pooled.shape[1:], dtype=work)
        uncond = uncond.embeds
    embeddings = [uncond.to(pipe.device, work).clone() for _ in range(n)]
    z = trajectory[-1].to(pipe.device, dtype)
    results = torch.empty(num_steps, n, *uncond.shape[1:], dtype=work)
    losses = [[0.0] * n for _ in range(num_steps)]
    inner = [[0] * n for _ in range(num_steps)]

    def unet_eps(sample, t, emb):
        counts["unet_forward"] += 1
        return predicted_noise(scheduler, unet_output(unet, sample, t, emb), t, sample)

    def null_rows(emb, items):
        """The unconditional input of ``items``: [k, 77, d], with pooled and time ids on SDXL."""
        if not xl:
            return emb
        return Conditioning(emb, torch.cat([pooled_params[k] for k in items.tolist()]).to(dtype), time_ids[items])

    bar = tqdm(total=num_steps, desc="null-text", disable=not progress, leave=False)
    for i, t in enumerate(scheduler.timesteps):
        target = trajectory[num_steps - i - 1].to(z.device, work)
        with torch.no_grad():
            eps_cond = unet_eps(z, t, cond)
        params = [e.detach().clone().requires_grad_(True) for e in embeddings]
        tuned = [[p] for p in params]
        if xl:
            pooled_params = [q.detach().clone().requires_grad_(optimize_pooled) for q in pooled]
            if optimize_pooled:
                tuned = [[p, q] for p, q in zip(params, pooled_params)]
        optimizers = [torch.optim.Adam(group, lr=1e-2 * (1.0 - i / 100.0)) for group in tuned]
        threshold = early_stop_epsilon + i * 2e-5
        active = list(range(n))
        for j in range(num_inner_steps):
            rows = torch.tensor(active, device=z.device)
            emb = torch.cat([params[k] for k in active]).to(dtype)
            eps_uncond = unet_eps(z[rows], t, null_rows(emb, rows))
            guided = eps_uncond + guidance_scale * (eps_cond[rows] - eps_uncond)
            prev = ddim_prev(scheduler, guided.to(work), t, z[rows].to(work))
            item_loss = F.mse_loss(prev, target[rows], reduction="none").flatten(1).mean(1)
            if not torch.isfinite(item_loss).all():
                raise InversionError(
                    f"null-text optimization diverged at step {i} (loss {item_loss.tolist()}). This is "
                    "usually float16 overflow: run with --dtype fp32 (or bf16), or lower the guidance scale."
                )
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            item_loss.sum().backward()
            counts["unet_backward"] += 1
            values = item_loss.detach().tolist()
            for pos, k in enumerate(active):
                optimizers[k].step()
                losses[i][k] = values[pos]
                inner[i][k] = j + 1
            active = [k for pos, k in enumerate(active) if values[pos] >= threshold]
            if not active:
                break
        embeddings = [p.detach() for p in params]
        with torch.no_grad():
            emb = torch.cat(embeddings).to(dtype)
            eps_uncond = unet_eps(z, t, null_rows(emb, torch.arange(n, device=z.device)))
            z = ddim_prev(scheduler, eps_uncond + guidance_scale * (eps_cond - eps_uncond), t, z)
        check_finite(z, "inversion", i + 1, num_steps, "null-text")
        results[i] = torch.cat(embeddings).cpu()
        if xl:
            pooled = [q.detach() for q in pooled_params]
            pooled_results[i] = torch.cat(pooled).cpu()
        bar.set_postfix(step=i, loss=f"{max(losses[i]):.2e}")
        bar.update()
        if on_step is not None:
            on_step(i + 1, num_steps)
    bar.close()
    final = trajectory[0].to(z.device, work)
    latent_error = F.mse_loss(z.to(work), final, reduction="none").flatten(1).mean(1).tolist()
    stats = {"final_loss": losses, "inner_steps": inner, "latent_error": latent_error}
    return (Conditioning(results, pooled_results) if xl else results), stats
