"""Our thin adapter between an energy network and ART (which is used unmodified).

ART sees a plain `nn.Module` from pixels in [0, 1] to logits. Its gradient calls (PGD, FGSM,
CW, AutoAttack's APGD) run with autograd on and get `attack_steps` free steps unrolled, with
gradient checkpointing so that long unrolls fit in memory; its predictions run under
`no_grad` and get `predict_steps` steps. The switch lives in the module, not in a classifier
subclass, because ART's AutoAttack builds its own classifiers from the wrapped module.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from art.estimators.classification import PyTorchClassifier
from torch import Tensor, nn

from model_utils import EnergyNet, checkpointed_relax


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

    def forward(self, x: Tensor) -> Tensor:
        model = self.model
        if self.feedforward:
            return model.logits(model.feedforward(x))
        if not torch.is_grad_enabled():
            return model(x, self.predict_steps)
        steps = self.attack_steps  # segments of about sqrt(T) steps: memory O(sqrt(T)) steps
        s = checkpointed_relax(model, model.batch(x), model.init_states(x), steps,
                               math.isqrt(max(steps - 1, 0)) + 1)
        return model.logits(s)


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
