"""Adversarial examples through ART: the attack sweep of a trained run (--todo attack) and the
PGD examples of adversarial training (--todo advtrain).

Images are attacked in [0, 1] pixel space; the task's normalisation is ART's preprocessing
(art_patches), so it is applied exactly once, inside the classifier.
"""

from __future__ import annotations

import contextlib
import math
import time
from argparse import Namespace
from collections.abc import Iterator
from dataclasses import astuple, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from art.attacks.evasion import (AutoAttack, CarliniL2Method, FastGradientMethod,
                                 HopSkipJump, ProjectedGradientDescent, SquareAttack)
from torch import Tensor
from tqdm import tqdm

import distributed
from art_patches import art_classifier
from data_utils import NORMALISATION, Split, normalise, pixels
from errors import UsageError
from model_utils import EnergyNet

ATTACKS = ("pgd", "fgsm", "autoattack", "square", "cw", "hsj")
NORMS = {"2": "2", "inf": "inf", "100": "inf"}  # the old scripts pass 100 for inf
PGD_ITERS = 20
# the seed study's sweeps: 10 log-spaced values, plus 8/255 (Linf) or 1.0 (L2)
DEFAULT_EPS = {"inf": [*np.logspace(-4, -1, 10).tolist(), 8 / 255],
               "2": [*np.logspace(math.log10(0.05), math.log10(3), 10).tolist(), 1.0]}
# whole test set for the fast attacks, 200 images for the slow ones (as the study), 100 for HSJ
SLOW_IMAGES = {"autoattack": 200, "square": 200, "cw": 200, "hsj": 100}
ADVTRAIN_IMAGES = 200
# one run finds each image's smallest adversarial perturbation: it serves every eps
MINIMAL = ("cw", "hsj")
GRADIENT_FREE = ("square", "hsj")  # predictions only: --attack-step does not change them
RESULTS_FILE, PLOT_FILE = "Adversarial_Accuracy.txt", "adversarial_accuracy.png"
STEPS_PLOT_FILE = "adversarial_accuracy_steps.png"


@dataclass
class Row:
    """One line of Adversarial_Accuracy.txt."""
    attack: str
    norm: str
    eps: float
    clean_acc: float
    adv_acc: float
    images: int
    attack_step: int
    predict_step: int
    seconds: float
    # the predictions' relaxation (solvers.py): each solver settles at its own fixed points
    solver: str = ""  # (files written before it was recorded: "")
    source: str = ""  # --todo transfer: the run whose examples these were (else no column)

    def line(self) -> str:
        values = astuple(self) if self.source else astuple(self)[:-1]
        return "\t".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in values)


TRANSFER_HEADER = "\t".join(f.name for f in fields(Row))
HEADER = TRANSFER_HEADER.rsplit("\t", 1)[0]


def solver_label(model: EnergyNet, feedforward: bool) -> str:
    """How a model's predictions relax, as rows name it."""
    if feedforward:
        return "feed-forward"
    return model.solver.label if model.solver else "sync"


def art_norm(norm: str) -> float:
    return np.inf if norm == "inf" else 2


def attack_steps(model: EnergyNet, args: Namespace, dest: str) -> list[int]:
    """The free steps an attack's gradient unrolls (flag `dest`: one value or several, default
    --T1; 0 for a BP-trained model, attacked feed-forward), each at least one per layer: the
    input reaches the output only after that many, and fewer give no gradient."""
    if args.alg == "BP":
        return [0]
    given = getattr(args, dest)
    values = [args.T1] if not given else given if isinstance(given, list) else [given]
    for steps in values:
        if steps < model.n_states:
            flag = "--" + dest.replace("_", "-") if given else "--T1"
            raise UsageError(f"{flag} {steps}: the input reaches the output only after "
                             f"{model.n_states} free steps (one per layer), so fewer give the "
                             f"attack no gradient; give at least {model.n_states}")
    return values


def predict_steps(args: Namespace) -> list[int]:
    """The free steps of the predictions under attack (--predict-step, default --T1; 0 for a
    BP-trained model)."""
    return [0] if args.alg == "BP" else args.predict_step or [args.T1]


def make_attack(name: str, classifier, norm: str, eps: float, mbs: int,
                hsj: tuple[int, int] = (50, 10000)):
    """ART's attack `name` at radius eps in `norm` (eps > 0 for square and autoattack; none for
    the minimal-perturbation ones); `hsj`: HopSkipJump's iterations and most queries for a
    gradient estimate."""
    p = art_norm(norm)
    if name == "pgd":  # eps 0 still runs: its projection keeps the images as they are
        return ProjectedGradientDescent(classifier, norm=p, eps=eps,
                                        eps_step=max(2.5 * eps / PGD_ITERS, 1e-12),
                                        max_iter=PGD_ITERS, num_random_init=0, batch_size=mbs,
                                        verbose=False)
    if name == "fgsm":
        return FastGradientMethod(classifier, norm=p, eps=eps, batch_size=mbs)
    if name == "square":
        return SquareAttack(classifier, norm=p, eps=eps, batch_size=mbs, verbose=False)
    if name == "autoattack":  # ART's standard set: APGD-CE, APGD-DLR, DeepFool, Square
        auto = AutoAttack(classifier, norm=p, eps=eps, eps_step=2.5 * eps / PGD_ITERS,
                          batch_size=mbs)
        for inner in auto.attacks:  # one progress bar (ours), not one per inner attack
            inner.verbose = False
        return auto
    if name == "hsj":  # labels only: ART reads the argmax of the predictions
        iters, evals = hsj
        return HopSkipJump(classifier, batch_size=mbs, targeted=False, norm=p, max_iter=iters,
                           max_eval=evals, init_eval=min(100, evals), verbose=False)
    return CarliniL2Method(classifier, batch_size=mbs, verbose=False)


@contextlib.contextmanager
def frozen(model: EnergyNet) -> Iterator[None]:
    """Weights without requires_grad while an attack runs: its backward passes then compute
    (and leave) no parameter gradient."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def attack_norms(args: Namespace) -> list[str]:
    return [NORMS[n] for n in args.attack_norm]


def eps_values(args: Namespace, norm: str) -> list[float]:
    return sorted(args.eps if args.eps is not None else DEFAULT_EPS[norm])


def image_count(args: Namespace, name: str, n_test: int) -> int:
    n = args.attack_images or SLOW_IMAGES.get(name, n_test)
    return min(n, n_test)


def subset(n_test: int, n: int, seed: int, device: torch.device) -> Tensor:
    """The first n of a seeded order of the test set (all of it, in order, for n_test)."""
    if n >= n_test:
        return torch.arange(n_test, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    return torch.randperm(n_test, generator=gen, device=device)[:n]


def perturbation_norm(x_adv: np.ndarray, x: np.ndarray, norm: str) -> np.ndarray:
    d = (x_adv - x).reshape(len(x), -1)
    return np.abs(d).max(1) if norm == "inf" else np.linalg.norm(d, axis=1)


@dataclass
class Sweep:
    """Everything one --todo attack call needs, and what it has found so far."""
    model: EnergyNet
    test: Split
    args: Namespace
    attack_step: int | None = None  # default: the first of --attack-step (--T1)
    predict_step: int | None = None  # default: the first of --predict-step (--T1)

    def __post_init__(self):
        args = self.args
        if self.attack_step is None:
            self.attack_step = attack_steps(self.model, args, "attack_step")[0]
        if self.predict_step is None:
            self.predict_step = predict_steps(args)[0]
        self.classifier = art_classifier(self.model, self.test.x.shape[1:], self.attack_step,
                                         self.predict_step, NORMALISATION.get(args.task),
                                         args.alg == "BP")
        self.solver = solver_label(self.model, args.alg == "BP")
        self.last: tuple[np.ndarray, ...] = ()
        self.minimal: tuple | None = None  # a minimal-perturbation attack's result
        self.examples: list[tuple[float, np.ndarray]] = []  # --save-examples: (eps, images)

    def images(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        idx = subset(len(self.test), n, self.args.seed, self.test.x.device)
        x = pixels(self.test.x[idx], self.args.task)
        return x.cpu().numpy(), self.test.y[idx].cpu().numpy()

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self.classifier.predict(x, batch_size=self.args.mbs)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.logits(x).argmax(1)

    def run(self, name: str, norm: str) -> Iterator[Row]:
        """Every eps of the sweep for one attack and norm, a row each; afterwards
        `self.last` holds the clean and adversarial images, their predictions and labels at
        the largest eps (for the image grid)."""
        args = self.args
        x, y = self.images(image_count(args, name, len(self.test)))
        clean_pred = self.predict(x)
        clean_acc = 100.0 * float((clean_pred == y).mean())
        self.minimal, self.examples = None, []
        for eps in eps_values(args, norm):
            start = time.time()
            x_adv, pred = self.adversarial(name, norm, eps, x, y, clean_pred)
            seconds = self.minimal[3] if name in MINIMAL else time.time() - start
            if args.save_examples:
                self.examples.append((eps, x_adv))
            row = Row(name, norm, float(eps), clean_acc, 100.0 * float((pred == y).mean()),
                      len(y), self.attack_step, self.predict_step, seconds, self.solver)
            tqdm.write(f"{name} L{norm} eps {eps:.4g}: clean {clean_acc:.2f}%, adversarial "
                       f"{row.adv_acc:.2f}% ({len(y)} images, {seconds:.1f}s)")
            self.last = (x, x_adv, clean_pred, pred, y)
            yield row

    def adversarial(self, name: str, norm: str, eps: float, x: np.ndarray, y: np.ndarray,
                    clean_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`name`'s adversarial images of x at eps and the model's predictions on them (a
        minimal-perturbation attack runs once, kept in self.minimal for the other eps)."""
        np.random.seed(self.args.seed)  # ART draws its random starts and squares from numpy
        torch.manual_seed(self.args.seed)
        if name in MINIMAL:  # an image counts as broken where its perturbation fits eps
            if self.minimal is None:
                start = time.time()
                self.minimal = (*self.smallest(name, norm, x, y, clean_pred), time.time() - start)
            found, pred, dist, _ = self.minimal
            inside = dist <= eps
            return (np.where(inside.reshape(-1, *[1] * (x.ndim - 1)), found, x),
                    np.where(inside, pred, clean_pred))
        no_budget = eps == 0 and name in ("square", "autoattack")  # ART needs eps > 0
        x_adv = x if no_budget else self.generate(name, norm, eps, x, y,
                                                  f"{name} L{norm} eps {eps:.3g}")
        return x_adv, self.predict(x_adv)

    def smallest(self, name: str, norm: str, x: np.ndarray, y: np.ndarray,
                 clean_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A minimal-perturbation attack's images, their predictions and perturbation norms;
        an image the model already gets wrong needs none (HSJ would move it off its wrong
        label, maybe onto the right one)."""
        found, pred, right = x.copy(), clean_pred.copy(), clean_pred == y
        if right.any():
            found[right] = self.generate(name, norm, 0.0, x[right], y[right], f"{name} L{norm}")
            pred[right] = self.predict(found[right])
        return found, pred, perturbation_norm(found, x, norm)

    def random_starts(self, x: np.ndarray, tries: int = 100) -> np.ndarray:
        """HopSkipJump's starting points: uniform noise the model labels otherwise than the
        image, drawn from numpy's seeded generator (ART's own search is unseeded)."""
        labels = self.predict(x)
        starts = np.random.uniform(0, 1, x.shape).astype(x.dtype)
        same = self.predict(starts) == labels
        for _ in range(tries - 1):
            if not same.any():
                break
            starts[same] = np.random.uniform(0, 1, starts[same].shape).astype(x.dtype)
            same[same] = self.predict(starts[same]) == labels[same]
        return starts  # (where none was found, ART searches on its own)

    def generate(self, name: str, norm: str, eps: float, x: np.ndarray, y: np.ndarray,
                 desc: str) -> np.ndarray:
        """ART's adversarial images, batch by batch (HSJ: image by image) under a progress
        bar."""
        mbs = self.args.mbs
        attack = make_attack(name, self.classifier, norm, eps, mbs,
                             (self.args.hsj_iter, self.args.hsj_evals))
        # HSJ: one image at a time anyway, from seeded starting points
        starts = self.random_starts(x) if name == "hsj" else None
        step = mbs if starts is None else 1
        out = np.empty_like(x)
        # ART divides by zero-norm gradients at eps 0 (harmlessly): keep its warnings quiet
        with frozen(self.model), np.errstate(divide="ignore", invalid="ignore"), \
                tqdm(total=len(x), desc=desc, unit="img", leave=False, dynamic_ncols=True) as bar:
            for i in range(0, len(x), step):
                extra = {} if starts is None else {"x_adv_init": starts[i:i + step]}
                out[i:i + step] = attack.generate(x[i:i + step], y[i:i + step], **extra)
                bar.update(len(x[i:i + step]))
        return out


def read_rows(path: Path) -> list[Row]:
    """Every row of an Adversarial_Accuracy.txt, read by the columns of the header above it
    (each call writes one; older files lack a column or two); comment lines skipped."""
    if not path.exists():
        return []
    kinds = {f.name: {"str": str, "float": float, "int": int}[f.type] for f in fields(Row)}
    rows, columns = [], HEADER.split("\t")
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if line.startswith("attack\t"):
            columns = parts
        elif not line.startswith("#") and len(parts) == len(columns):
            rows.append(Row(**{c: kinds[c](v) for c, v in zip(columns, parts)}))
    return rows


@dataclass
class AdversarialBatches:
    """advtrain: the first `fraction` of each (normalised) batch replaced by PGD examples
    made against the current model through `attack_step` free steps; the robust accuracy of
    a fixed test subset once per epoch."""
    model: EnergyNet
    task: str
    norm: str
    eps: float
    fraction: float
    attack_step: int
    predict_step: int
    mbs: int
    robust_test: Split
    feedforward: bool = False

    def __post_init__(self):
        self.classifier = art_classifier(self.model, self.robust_test.x.shape[1:],
                                         self.attack_step, self.predict_step,
                                         NORMALISATION.get(self.task), self.feedforward)
        self.attack = make_attack("pgd", self.classifier, self.norm, self.eps, self.mbs)

    def __str__(self) -> str:
        steps = ("feed-forward" if self.feedforward else
                 f"gradient through {self.attack_step} free steps")
        return (f"PGD-{PGD_ITERS} L{self.norm} eps {self.eps:.4g} on {100 * self.fraction:g}% of "
                f"each batch ({steps}); robust test accuracy on {len(self.robust_test)} images")

    def adversarial_pixels(self, x: Tensor, y: Tensor) -> np.ndarray:
        """PGD examples, in pixel space, of normalised images x."""
        with frozen(self.model):
            return self.attack.generate(pixels(x, self.task).cpu().numpy(), y.cpu().numpy())

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        k = round(self.fraction * len(y))
        if k == 0:
            return x
        adv = torch.from_numpy(self.adversarial_pixels(x[:k], y[:k])).to(x.device)
        return torch.cat([normalise(adv, self.task), x[k:]])  # normalised once, as x was

    def robust_accuracy(self) -> float:
        """Accuracy (%) on PGD examples of the robust test subset (under torchrun each
        process attacks a part of it)."""
        data, correct, part = self.robust_test, 0, distributed.shard(len(self.robust_test))
        for i in range(part.start, part.stop, self.mbs):
            end = min(i + self.mbs, part.stop)
            x, y = data.x[i:end], data.y[i:end]
            pred = self.classifier.predict(self.adversarial_pixels(x, y),
                                           batch_size=self.mbs).argmax(1)
            correct += int((pred == y.cpu().numpy()).sum())
        total = distributed.all_sum(torch.tensor(float(correct), device=data.x.device))
        return 100.0 * total.item() / len(data)


def adversary(model: EnergyNet, test: Split, args: Namespace) -> AdversarialBatches:
    """advtrain's adversary from the flags (--eps default: 8/255 for Linf, 1 for L2)."""
    norm = attack_norms(args)[0]
    eps = args.eps[0] if args.eps else DEFAULT_EPS[norm][-1]
    steps = attack_steps(model, args, "train_attack_step")[0]
    idx = subset(len(test), args.attack_images or ADVTRAIN_IMAGES, args.seed, test.x.device)
    return AdversarialBatches(model, args.task, norm, eps, args.adv_fraction, steps, args.T1,
                              args.mbs, Split(test.x[idx], test.y[idx]), args.alg == "BP")
