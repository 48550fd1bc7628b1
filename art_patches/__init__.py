"""Our thin adapter between an energy network and ART (which is used unmodified).

ART sees a plain `nn.Module` from pixels in [0, 1] to logits. Its gradient calls (PGD, FGSM,
CW, AutoAttack's APGD) run with autograd on and get `attack_steps` free steps unrolled, with
gradient checkpointing when the unroll would not fit a memory budget; its predictions run
under
`no_grad` and get `predict_steps` steps. The switch lives in the module, not in a classifier
subclass, because ART's AutoAttack builds its own classifiers from the wrapped module.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from art.estimators.classification import PyTorchClassifier
from torch import Tensor, nn

from model_utils import EnergyNet, checkpointed_relax, flat_states, map_states, relax


# a gradient whose plain unroll would keep more than this is checkpointed (it costs 1.7-2.5x
# the time: BENCHMARKS.md)
MEMORY_BUDGET = 2 * 2**30


class UnrolledNet(nn.Module):
    """Pixels -> logits of `model`: `attack_steps` free steps when autograd is on (ART's
    gradients), `predict_steps` under no_grad (ART's predictions); with `feedforward`, the
    feed-forward pass of a BP-trained model for both. A gradient whose unroll would keep more
    than `memory_budget` bytes for backward is checkpointed, in segments of the length that
    needs the least memory."""

    def __init__(self, model: EnergyNet, attack_steps: int, predict_steps: int,
                 feedforward: bool = False, memory_budget: int = MEMORY_BUDGET):
        if not feedforward and attack_steps < model.n_states:
            raise ValueError(f"the input reaches the output only after {model.n_states} steps "
                             f"(one per layer), so {attack_steps} give no gradient")
        super().__init__()
        self.model = model
        self.attack_steps, self.predict_steps = attack_steps, predict_steps
        self.feedforward, self.memory_budget = feedforward, memory_budget
        self.unroll_bytes: tuple[int, int] | None = None  # per image: a state, a step's saves

    def forward(self, x: Tensor) -> Tensor:
        model, steps = self.model, self.attack_steps
        x = x.to(next(model.parameters()).dtype)  # HopSkipJump's queries come in float64
        if self.feedforward:
            return model.logits(model.feedforward(x))
        if not torch.is_grad_enabled():
            return model(x, self.predict_steps)
        if self.unroll_bytes is None:
            self.unroll_bytes = unroll_bytes(model, x[:1])
        state, step = self.unroll_bytes
        batch, s = model.batch(x), model.init_states(x)
        if steps * step * len(x) <= self.memory_budget:
            return model.logits(relax(model, batch, s, steps))
        return model.logits(checkpointed_relax(model, batch, s, steps,
                                               checkpoint_segment(steps, state, step)))


def checkpoint_segment(steps: int, state: int, step: int) -> int:
    """The segment length that needs the least memory for a gradient through `steps` steps:
    steps / segment saved states plus one segment of steps' saves, least at
    sqrt(steps * state / step) (bytes of a state, of what a step saves)."""
    return min(steps, max(1, round(math.sqrt(steps * state / step))))


def unroll_bytes(model: EnergyNet, x: Tensor) -> tuple[int, int]:
    """Bytes per image of one state, and of what one step keeps for its backward pass
    (measured on a step of `x`, each storage once, the weights not counted)."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    x = x.detach().clone().requires_grad_()  # its own storage, not a slice of the batch's
    states = map_states(lambda t: t.detach().requires_grad_(), model.init_states(x))
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.step(model.batch(x), states)
    state = sum(t.numel() * t.element_size() for t in flat_states(states))
    return state // len(x), max(sum(saved.values()) // len(x), 1)


def art_classifier(model: EnergyNet, image_shape: tuple[int, ...], attack_steps: int,
                   predict_steps: int, normalisation: tuple[tuple, tuple] | None,
                   feedforward: bool = False) -> PyTorchClassifier:
    """ART's own PyTorchClassifier around UnrolledNet: images of `image_shape` (C, H, W) in
    [0, 1] pixel space, the task's normalisation as ART preprocessing, the model's training
    loss as the attack loss."""
    loss = nn.MSELoss() if model.loss_name == "mse" else nn.CrossEntropyLoss()
    preprocessing = (0.0, 1.0)
    if normalisation is not None:
        mean, std = (np.asarray(v, dtype=np.float32).reshape(-1, 1, 1) for v in normalisation)
        preprocessing = (mean, std)
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.set_device(device)  # ART puts everything on the current CUDA device
    return PyTorchClassifier(UnrolledNet(model, attack_steps, predict_steps, feedforward), loss,
                             tuple(image_shape), model.num_classes, clip_values=(0.0, 1.0),
                             preprocessing=preprocessing,
                             device_type="gpu" if device.type == "cuda" else "cpu")
