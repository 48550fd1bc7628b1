"""An experiment, not a feature: main.py whose training free phases add Gaussian noise to
every layer's field for all but their last CLEAN steps (std NOISE times that field's rms;
0.0024 is the rms of bfloat16's rounding error of the CNN line's fields). Evaluation, the
nudged phases and the last CLEAN free steps stay clean fp32. It asks whether bf16 trains the
CNN better than fp32 because its rounding perturbs the early free steps (BENCHMARKS.md).

    NOISE=0.0024 CLEAN=40 python check/free_noise.py <main.py flags>
"""

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import model_utils  # noqa: E402

NOISE = float(os.environ.get("NOISE", "0.0024"))
CLEAN = int(os.environ.get("CLEAN", "40"))
plain_relax = model_utils.relax
noise = torch.Generator()  # its own stream: the batch order and the weights' init are main's


def noisy_step(model: model_utils.EnergyNet, batch: model_utils.Batch, s: list) -> list:
    fields = model.field(batch, model.visible(s))
    fields = [f + NOISE * f.pow(2).mean().sqrt() * torch.empty_like(f).normal_(generator=noise)
              for f in fields]
    return [n.update(a, old) for n, a, old in zip(model.neurons, fields, s)]


def relax(model, batch, s, steps, explicit=True):
    """A training free phase (a target, beta 0, not linearised) runs its first steps noisy."""
    free = (batch.target is not None and batch.reference is None
            and not isinstance(batch.beta, torch.Tensor) and batch.beta == 0)
    if free and steps > CLEAN:
        for _ in range(steps - CLEAN):
            s = noisy_step(model, batch, s)
        steps = CLEAN
    return plain_relax(model, batch, s, steps, explicit)


if __name__ == "__main__":
    import main

    noise.manual_seed(int(main.parse(sys.argv[1:])[0].seed))
    model_utils.relax = relax  # ep_gradients finds relax in model_utils when it runs
    sys.exit(main.main())
