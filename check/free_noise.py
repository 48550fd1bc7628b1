"""An experiment, not a feature: main.py whose EP free phases in training (beta1 0, the
published lines) add Gaussian noise to every layer's field for all but their last CLEAN
steps (std NOISE times that field's rms; 0.0024 is the rms of bfloat16's rounding error of
the CNN line's fields). Evaluation, the nudged phases and the last CLEAN free steps stay
clean fp32. The noisy steps are the explicit eager ones (whatever --dynamics and --compile
say). It asks whether bf16 trains the CNN better than fp32 because its rounding perturbs
the early free steps (BENCHMARKS.md).

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
seed = 0  # main's --seed, set below
generators: dict[torch.device, torch.Generator] = {}  # own streams: batch order stays main's


def noise_like(f: torch.Tensor) -> torch.Tensor:
    if f.device not in generators:
        generators[f.device] = torch.Generator(f.device).manual_seed(seed)
    return torch.empty_like(f).normal_(generator=generators[f.device])


def noisy_step(model: model_utils.EnergyNet, batch: model_utils.Batch,
               s: model_utils.States) -> model_utils.States:
    fields = model.field(batch, model.visible(s))
    fields = [f + NOISE * f.pow(2).mean().sqrt() * noise_like(f) for f in fields]
    return [n.update(a, old) for n, a, old in zip(model.neurons, fields, s)]


def relax(model: model_utils.EnergyNet, batch: model_utils.Batch, s: model_utils.States,
          steps: int, explicit: bool = True, check_every: int | None = None
          ) -> model_utils.States:
    """A training free phase (a target, beta 0, not linearised, more than CLEAN steps) runs
    its first steps noisy; BPTT's T2 steps with a graph only if T2 > CLEAN."""
    free = (batch.target is not None and batch.reference is None
            and model_utils._is_zero(batch.beta))
    if free and steps > CLEAN:
        for _ in range(steps - CLEAN):
            s = noisy_step(model, batch, s)
        steps = CLEAN
    return plain_relax(model, batch, s, steps, explicit, check_every)


if __name__ == "__main__":
    import main

    seed = int(main.parse(sys.argv[1:])[0].seed)
    model_utils.relax = relax  # ep_gradients finds relax in model_utils when it runs
    sys.exit(main.main())
