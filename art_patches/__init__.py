"""Our thin adapter between an energy network and ART (which is used unmodified).

ART sees a plain `nn.Module` from pixels in [0, 1] to logits. Its gradient calls (PGD, FGSM,
CW, AutoAttack's APGD) run with autograd on and get `attack_steps` free steps unrolled, with
gradient checkpointing so that long unrolls fit in memory (segments of the length that
needs the least memory); its predictions run under
`no_grad` and get `predict_steps` steps. The switch lives in the module, not in a classifier
subclass, because ART's AutoAttack builds its own classifiers from the wrapped module.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from art.estimators.classification import PyTorchClassifier
from torch import Tensor, nn

from model_utils import EnergyNet, checkpointed_relax, flat_states, map_states


class UnrolledNet(nn.Module):
    """Pixels -> logits of `model`: `attack_steps` free steps when autograd is on (ART's
    gradients), `predict_steps` under no_grad (ART's predictions); with `feedforward`, the
    feed-forward pass of a BP-trained model for both."""

    def __init__(self, model: EnergyNet, attack_steps: int, predict_steps: int,
                 feedforward: bool = False):
        if not feedforward and attack_steps < model.n_states:
            raise ValueError(f"the input reaches the output only after {model.n_states} steps "
                             f"(one per layer), so {attack_steps} give no gradient")
        super().__init__()
        self.model = model
        self.attack_steps, self.predict_steps = attack_steps, predict_steps
        self.feedforward = feedforward
        self.segment: int | None = None  # steps per checkpoint segment, set on the first call

    def forward(self, x: Tensor) -> Tensor:
        model = self.model
        if self.feedforward:
            return model.logits(model.feedforward(x))
        if not torch.is_grad_enabled():
            return model(x, self.predict_steps)
        if self.segment is None:
            self.segment = memory_optimal_segment(model, x[:1], self.attack_steps)
        s = checkpointed_relax(model, model.batch(x), model.init_states(x), self.attack_steps,
                               self.segment)
        return model.logits(s)


def memory_optimal_segment(model: EnergyNet, x: Tensor, steps: int) -> int:
    """The checkpoint segment length that needs the least memory for a gradient through
    `steps` steps: the backward pass holds steps / segment saved states plus one segment of
    steps' saved tensors, least at segment = sqrt(steps * state bytes / step bytes)."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}  # the memory one step keeps for backward, each storage once

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    x = x.detach().requires_grad_()
    states = map_states(lambda t: t.detach().requires_grad_(), model.init_states(x))
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.step(model.batch(x), states)
    state = sum(t.numel() * t.element_size() for t in flat_states(states))
    step = max(sum(saved.values()), 1)
    return min(steps, max(1, round(math.sqrt(steps * state / step))))


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
