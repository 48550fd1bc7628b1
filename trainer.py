"""The training loop: epochs of on-device mini-batches, evaluation, checkpoints and resume.

Everything a run needs to continue bit for bit (weights, optimizer, scheduler, history, the
data generator and, after Ctrl-C, the position inside the epoch) is in checkpoint.tar.
"""

from __future__ import annotations

import hashlib
import math
import signal
import sys
import time
from argparse import Namespace
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

import distributed
import plots
from data_utils import Split, batches, num_batches
from config import CLAMPING
from continual import CEP_CHECK_LR, continual_ep, step_weight_decays
from errors import Diverged, UsageError
from gdu import gdu_check, mean_rmse
from holomorphic import holomorphic_gradients
from model_utils import (EnergyNet, Phases, States, bp_gradients, bptt_gradients, ep_gradients,
                         free_phase, write_grads)
from results import (BEST_MODEL, CHECKPOINT, DICTIONARY, FINAL_CHECKPOINT, FINAL_MODEL, METRICS,
                     atomic_save, load_weights, write_metrics)
from solvers import StepCounts

EVAL_MBS = 500
HISTORY_KEYS = ("epoch", "train_acc", "test_acc", "train_loss", "seconds")
CHECK_THM_SAMPLES = 5
CODE_KEYS = ("recon_error", "sparsity")  # LCANet's code on the test split, per epoch
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
BLOWUP_GROWTH, BLOWUP_ACCURACY = 1e3, 1.5  # x the init's largest weight; x chance accuracy


def make_optimizer(model: EnergyNet, args: Namespace) -> torch.optim.Optimizer:
    """One parameter group per synapse, with that layer's lr and weight decay (CEP's per
    step, converted as published)."""
    groups = [{"params": list(syn.parameters()), "lr": lr, "weight_decay": wd}
              for syn, lr, wd in zip(model.synapses, args.lrs, weight_decays(args))]
    # fused: one kernel for all parameters (2-3x faster steps on CPU and on CUDA)
    if args.optim == "sgd":
        return torch.optim.SGD(groups, momentum=args.mmt, fused=True)
    return torch.optim.Adam(groups, fused=True)


def weight_decays(args: Namespace) -> list[float]:
    """Each layer's weight decay: --wds, or CEP's per step (it depends on T2 and the lrs)."""
    if args.alg == "CEP" and not args.cep_debug:
        return step_weight_decays(args.lrs, args.wds, args.T2)
    return args.wds


def make_scheduler(optimizer: torch.optim.Optimizer, args: Namespace):
    """--lr-decay: cosine annealing of every group's lr over 100 epochs down to 1e-5."""
    if not args.lr_decay:
        return None
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=100, eta_min=1e-5)


def step_scheduler(scheduler) -> None:
    """One epoch of the schedule; past T_max the lr stays at its floor (as the published code:
    a cosine stepped further would climb back up)."""
    if scheduler is not None and scheduler.last_epoch < scheduler.T_max:
        scheduler.step()


def check_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Each parameter's saved buffers have its shape (load_state_dict does not check)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if key != "step" and (not isinstance(value, Tensor) or value.shape != p.shape):
                    raise ValueError(f"a {key} of shape {tuple(getattr(value, 'shape', ()))} "
                                     f"for a weight of shape {tuple(p.shape)}")


def phases_from(args: Namespace) -> Phases:
    """The phases of the rule; CL is CpL at beta 1, its clamp the target itself."""
    beta2 = 1.0 if args.alg == "CL" else args.betas[1]
    return Phases(args.T1, args.T2, args.betas[0], beta2, args.thirdphase,
                  args.dynamics == "explicit", args.same_update, args.alg in CLAMPING)


@torch.no_grad()
def predict(model: EnergyNet, x: Tensor, alg: str, T1: int, explicit: bool = True) -> States:
    """Free states from zero after T1 steps (the feed-forward pass for a BP-trained model)."""
    return model.feedforward(x) if alg == "BP" else free_phase(model, x, T1, explicit)


@torch.no_grad()
def evaluate_split(model: EnergyNet, data: Split, alg: str, T1: int, explicit: bool = True,
                   mbs: int = EVAL_MBS) -> dict[str, float]:
    """Over a whole split: accuracy (%), mean loss and, for LCANet, the code's mean
    reconstruction error and sparsity (EnergyNet.code_stats)."""
    sums: dict[str, Tensor] = {}
    part = distributed.shard(len(data))  # under torchrun, each process a part of the split
    for i in range(part.start, part.stop, mbs):
        end = min(i + mbs, part.stop)
        x, y = data.x[i:end], data.y[i:end]
        s = predict(model, x, alg, T1, explicit)
        per_sample = {"acc": 100.0 * (model.logits(s).argmax(1) == y),
                      "loss": model.loss(s, model.one_hot(y, x)), **model.code_stats(x, s)}
        for key, values in per_sample.items():
            sums[key] = sums.get(key, 0) + values.sum()
    keys = sorted(sums)
    totals = distributed.all_sum(torch.stack([sums[k] for k in keys])).tolist()
    return {key: value / len(data) for key, value in zip(keys, totals)}


# the size of a generator's state on each device type (torch.Generator.get_state())
GENERATOR_STATE_BYTES = {"cpu": 5056, "cuda": 16}


def restore_generator(gen: torch.Generator, state: Tensor) -> None:
    """gen <- a saved state; a state of the other device type (a run resumed from the CPU on a
    GPU or back) seeds gen from its bytes instead: deterministic, but a new sequence."""
    size = GENERATOR_STATE_BYTES.get(gen.device.type)
    saved_on = [d for d, n in GENERATOR_STATE_BYTES.items() if n == state.numel() != size]
    if not (saved_on and state.dtype == torch.uint8):
        gen.set_state(state)
        return
    digest = hashlib.sha256(state.numpy().tobytes()).digest()
    gen.manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    tqdm.write(f"notice: the run was saved on a {saved_on[0].upper()} device and resumes on a "
               f"{gen.device.type.upper()} device: its data generator is seeded anew from the "
               "saved state, so the batch order, augmentation and dropout masks from here on "
               "differ from an uninterrupted run's")


@dataclass
class Cursor:
    """Where an interrupted epoch stands: its sample order, samples done and running sums."""
    perm: Tensor
    seen: int = 0
    correct: float = 0.0
    loss_sum: float = 0.0
    seconds: float = 0.0
    gdu_rmse: list[float] = field(default_factory=list)  # --check-thm results so far
    batches: int = 0
    free_steps: float = 0.0  # --solver: steps (sweeps) of the batches' phases, summed
    nudged_steps: float = 0.0
    capped: float = 0.0  # --tol: samples whose free phase reached --T1 unconverged
    relaxed: float = 0.0  # ... out of so many


class Trainer:
    """`adversary` (advtrain): called on each batch (x, y), returns the batch to train on,
    and gives a `robust_accuracy()` per epoch (attack.AdversarialBatches)."""

    def __init__(self, model: EnergyNet, train: Split, test: Split, args: Namespace,
                 run_dir: Path | None, adversary=None):
        self.model, self.train, self.test = model, train, test
        self.args, self.run_dir, self.adversary = args, run_dir, adversary
        self.optimizer = make_optimizer(model, args)
        self.scheduler = make_scheduler(self.optimizer, args)
        self.phases = phases_from(args)
        self.gen = torch.Generator(device=train.x.device).manual_seed(args.seed)
        self.history: dict[str, list] = {k: [] for k in HISTORY_KEYS}
        self.epoch, self.best_acc, self.cursor = 0, -1.0, None
        self.stop_requested = False
        self.sign = 1.0  # the last batch's sign of beta2
        self.last_free_states: States = []
        self.start_sizes = self.weight_sizes()  # the init's (as built: a resume's too)

    # ---- checkpoint ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "epoch": self.epoch,
            "best_acc": self.best_acc,
            "history": self.history,
            "gen": self.gen.get_state(),
            "cursor": asdict(self.cursor) if self.cursor else None,
            "args": vars(self.args),
        }

    def load_state_dict(self, ckpt: dict, where: str = "the checkpoint") -> None:
        """Everything a resume needs, each part checked: one line names what is damaged."""
        load_weights(self.model, ckpt, where, [])
        published = ckpt.get("published")  # no data generator state: it starts from --seed
        part = "optimizer state"
        try:
            if ckpt["optimizer"] is not None or not published:
                self.optimizer.load_state_dict(ckpt["optimizer"])
                check_optimizer_state(self.optimizer)
                if self.args.alg == "CEP":  # its decay follows a --T2 or --cep-debug typed now
                    for group, wd in zip(self.optimizer.param_groups, weight_decays(self.args)):
                        group["weight_decay"] = wd
            part = "scheduler state"
            if self.scheduler and ckpt["scheduler"]:
                self.scheduler.load_state_dict(ckpt["scheduler"])
            part = "epoch and history"
            self.epoch, self.best_acc = ckpt["epoch"], float(ckpt["best_acc"])
            self.history = {k: list(v) for k, v in ckpt["history"].items()}
            if not (isinstance(self.epoch, int) and self.epoch >= 0 and all(
                    len(self.history[k]) == self.epoch for k in HISTORY_KEYS)):
                raise ValueError(f"epoch {self.epoch!r} and a history of "
                                 f"{len(self.history['epoch'])} epochs")
            part = "data generator state"
            if not published:
                restore_generator(self.gen, ckpt["gen"])
            part = "position inside the epoch"
            self.cursor = self.checked_cursor(ckpt["cursor"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UsageError(f"{where}: its {part} is damaged or belongs to another model "
                             f"({reason}); use another run folder") from None

    def checked_cursor(self, cur: dict | None) -> Cursor | None:
        """A mid-epoch position: a permutation of this training set and a count inside it."""
        if not cur:
            return None
        cur = Cursor(**{**cur, "perm": cur["perm"].to(self.train.x.device)})
        n = len(self.train)
        if not (cur.perm.shape == (n,) and torch.equal(cur.perm.sort()[0],
                                                        torch.arange(n, device=cur.perm.device))
                and isinstance(cur.seen, int) and 0 <= cur.seen <= n):
            raise ValueError(f"not a position in a training set of {n} samples")
        return cur

    def save(self, name: str) -> None:
        if self.run_dir is not None:
            self.check_finite_weights()
            atomic_save(self.state_dict(), self.run_dir / name)

    def save_model(self, name: str, test_acc: float) -> None:
        if self.run_dir is not None:
            self.check_finite_weights()
            atomic_save({"model": self.model.state_dict(), "args": vars(self.args),
                         "epoch": self.epoch, "test_acc": test_acc}, self.run_dir / name)

    def check_finite_weights(self) -> None:
        """Never write a non-finite weight: the files on disk stay the last good ones."""
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            raise Diverged(f"NaN or inf in the weights after epoch {self.epoch}: lower --lrs "
                           f"(or --betas{self.lca_hint()}){self.files_kept()}")

    def lca_hint(self) -> str:
        return ", or raise --tau" if self.model.sparse_coding is not None else ""

    def files_kept(self) -> str:
        return "; the last good checkpoint is kept" if self.run_dir is not None else ""

    def rebuild_outputs(self) -> None:
        """metrics.csv and the plots from the checkpoint's history (the checkpoint is the truth:
        a kill between the two writes must not leave them disagreeing)."""
        if self.run_dir is None or not self.history["epoch"]:
            return
        write_metrics(self.run_dir / METRICS, self.history)
        plots.plot_accuracy(self.history, self.run_dir / "train-test_acc.png")
        if any(k.startswith("angle_") for k in self.history):
            plots.plot_angles(self.history, self.run_dir / "angles.png")

    # ---- training ------------------------------------------------------------------------
    def train_batch(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, States]:
        """Gradients of one batch by the chosen algorithm, as the whole batch's mean (with
        --dropouts under masks drawn for this batch; for advtrain on its adversarial version).
        Under torchrun this process relaxes its share of the batch; returns that share (x, y)
        and its free states."""
        alg, masks, total = self.args.alg, None, len(y)
        if self.args.dropouts is not None:  # drawn for the whole batch: alike in every process
            masks = self.model.dropout_masks(x, self.args.dropouts, self.gen)
        sign = -1.0 if self.args.nudge == "negative" else 1.0
        if self.args.random_sign:
            sign = 2.0 * torch.randint(0, 2, (), generator=self.gen, device=x.device).item() - 1
        self.sign = sign  # (--check-thm checks the batch's own nudge)
        part = distributed.shard(total)
        x, y = x[part], y[part]
        masks = masks and tuple(m if m is None else m[part] for m in masks)
        if self.adversary is not None and len(y):
            x = self.adversary(x, y)
        if alg == "CEP":  # its optimizer steps are inside the nudged phase (in every process)
            return x, y, continual_ep(self.model, x, y, self.phases, self.optimizer, sign, masks,
                                      self.args.cep_debug, lambda: distributed.average_gradients(
                                          self.model, len(y), total))
        if not len(y):  # a last batch smaller than the process count: this one has no share
            write_grads(self.model, [torch.zeros_like(p) for p in self.model.parameters()])
            s = self.model.init_states(x)
        elif alg in ("EP", *CLAMPING):
            s = ep_gradients(self.model, x, y, self.phases, sign, masks)
        elif alg == "hEP":
            s = holomorphic_gradients(self.model, x, y, self.phases, self.args.holo_points, masks)
        elif alg == "BPTT":
            s = bptt_gradients(self.model, x, y, self.phases, masks)
        else:
            s = bp_gradients(self.model, x, y, masks)
        distributed.average_gradients(self.model, len(y), total)
        return x, y, s

    def run_epoch(self, total_epochs: int) -> None:
        """Train one epoch (or its rest after a resume) unless a stop signal comes first."""
        n = len(self.train)
        if self.cursor is None:
            perm = torch.randperm(n, generator=self.gen, device=self.train.x.device)
            self.cursor = Cursor(perm)
        cur = self.cursor
        start_time = time.time() - cur.seconds
        done = cur.seen // self.args.mbs
        stream = batches(self.train, self.args.mbs, cur.perm, cur.seen, self.args.data_aug,
                         self.gen)
        with tqdm(total=num_batches(n, self.args.mbs), initial=done, unit="batch",
                  desc=f"epoch {self.epoch + 1}/{total_epochs}", dynamic_ncols=True, leave=False,
                  mininterval=0.5 if sys.stderr.isatty() else 30,
                  disable=not distributed.is_main()) as bar:  # cleared before an error's line
            for b, (x, y) in enumerate(stream, done):
                self.fit_batch(b, x, y)
                cur.seconds = time.time() - start_time
                bar.update()
                steps = {} if self.model.solver is None else {"steps": (
                    f"{cur.free_steps / cur.batches:.0f}+{cur.nudged_steps / cur.batches:.0f}")}
                bar.set_postfix(acc=f"{100 * cur.correct / cur.seen:.2f}%", **steps,
                                refresh=False)
                if self.stop_requested:
                    break

    def fit_batch(self, b: int, x: Tensor, y: Tensor) -> None:
        """Batch b of the epoch: its gradients, the optimizer step, and its statistics."""
        cur, total, model = self.cursor, len(y), self.model
        solvers = (model.solver, model.nudged_solver) if model.solver is not None else ()
        for solver in solvers:
            solver.counts = StepCounts()
        x, y, s = self.train_batch(x, y)
        if self.args.alg != "CEP":
            self.optimizer.step()
        self.model.after_update(x, s, distributed.all_sum, total)
        counts = ([0.0] * 4 if not solvers else [model.solver.counts.steps,
                  model.nudged_solver.counts.steps, model.solver.counts.capped,
                  model.solver.counts.samples])
        with torch.no_grad():  # one device sync per batch: the stats and a finiteness check
            weight_sum = torch.stack([p.sum() for p in self.model.parameters()]).sum()
            loss = self.model.loss(s, self.model.one_hot(y, x)).sum()
            correct = (self.model.logits(s).argmax(1) == y).sum()
            # summed over the processes, with whether any of them was asked to stop
            stop = loss.new_tensor(float(self.stop_requested))
            stats = distributed.all_sum(torch.cat([
                torch.stack([correct.to(loss), loss, weight_sum.to(loss), stop]),
                loss.new_tensor(counts)])).tolist()
        self.stop_requested = stats[3] > 0
        processes = distributed.world_size()
        cur.batches += 1
        cur.free_steps += stats[4] / processes  # each process relaxes its share
        cur.nudged_steps += stats[5] / processes
        cur.capped += stats[6]
        cur.relaxed += stats[7]
        if not all(map(math.isfinite, stats)):
            raise Diverged(f"NaN or inf in the states or weights at epoch {self.epoch + 1}, "
                           f"batch {b + 1}: lower --lrs (or --betas{self.lca_hint()})"
                           f"{self.files_kept()}")
        if self.args.check_thm and b % max(1, num_batches(len(self.train), self.args.mbs)
                                           // 10) == 0:
            cur.gdu_rmse.append(self.check_theorem(x, y))
        cur.seen += total
        cur.correct += stats[0]
        cur.loss_sum += stats[1]
        self.last_free_states = s

    def check_theorem(self, x: Tensor, y: Tensor) -> float:
        """--check-thm: the GDU check on the batch's first samples; its mean normalised RMSE."""
        ph, k = self.phases, CHECK_THM_SAMPLES
        continual_lr = CEP_CHECK_LR if self.args.alg == "CEP" else 0.0
        result = gdu_check(self.model, x[:k], y[:k], ph.T1, ph.T2, self.sign * ph.beta2, False,
                           ph.same_update, continual_lr)
        rmse = mean_rmse(result["metrics"]["one_sided"])
        tqdm.write(f"GDU check ({len(y[:k])} samples): mean normalised RMSE {rmse:.4f}")
        return rmse

    def weight_sizes(self) -> list[float]:
        """Each synapse's largest weight (in size)."""
        with torch.no_grad():
            return [syn.weight.abs().max().item() for syn in self.model.synapses]

    def check_blowup(self, test_acc: float) -> None:
        """A run that blew up without reaching inf or NaN: test accuracy at chance, and some
        layer's weights orders of magnitude larger than the init's."""
        chance = 100.0 / self.model.num_classes
        growth = [now / max(then, 1e-30) for now, then in zip(self.weight_sizes(),
                                                                self.start_sizes)]
        layer = max(range(len(growth)), key=growth.__getitem__)
        if test_acc <= BLOWUP_ACCURACY * chance and growth[layer] >= BLOWUP_GROWTH:
            tqdm.write(f"notice: in epoch {self.epoch}, test accuracy {test_acc:.1f}% is chance, "
                       f"and the largest weight of layer {layer + 1} is {growth[layer]:.1e} "
                       "times that at the start: the run has blown up; lower --lrs")

    def check_convergence(self, cur: Cursor) -> None:
        """--tol: a notice when most training free phases reached --T1 before converging."""
        if cur.relaxed and cur.capped > cur.relaxed / 2:
            tqdm.write(f"notice: in epoch {self.epoch}, {100 * cur.capped / cur.relaxed:.0f}% of "
                       f"the free phases reached --T1 {self.args.T1} before changing by less "
                       f"than --tol {self.args.tol:g} a step; raise --T1 (or --tol)")

    def check_tau(self) -> None:
        """LCANet: a notice when the dictionary has grown too coherent for --tau (the code then
        oscillates and EP's gradient estimate degrades)."""
        coding = self.model.sparse_coding
        if coding is None:
            return
        least = coding.stable_tau()
        if self.args.tau < least:
            tqdm.write(f"notice: --tau {self.args.tau:g} is below {least:.1f}, half the largest "
                       "eigenvalue of the dictionary's D * D^T: the code oscillates instead of "
                       f"settling; resume with --tau {math.ceil(least * 1.5)} or more")

    def log(self, key: str, value: float) -> None:
        """One value of an optional column for this epoch (empty for epochs without one)."""
        column = self.history.setdefault(key, [])
        column += [None] * (len(self.history["epoch"]) - 1 - len(column)) + [round(value, 6)]

    def end_epoch(self) -> None:
        """Evaluate, log, plot and checkpoint after a full epoch."""
        cur, args = self.cursor, self.args
        scores = evaluate_split(self.model, self.test, args.alg, args.T1, self.phases.explicit)
        test_acc = scores["acc"]
        self.epoch += 1
        row = (self.epoch, 100 * cur.correct / cur.seen, test_acc, cur.loss_sum / cur.seen,
               cur.seconds)
        for k, v in zip(HISTORY_KEYS, row):
            self.history[k].append(round(v, 6) if isinstance(v, float) else v)
        if cur.gdu_rmse:
            self.log("gdu_rmse", sum(cur.gdu_rmse) / len(cur.gdu_rmse))
        self.check_blowup(test_acc)
        if self.model.solver is not None and cur.batches:
            self.log("free_steps", cur.free_steps / cur.batches)
            self.log("nudged_steps", cur.nudged_steps / cur.batches)
            self.check_convergence(cur)
        for k, v in self.model.feedback_angles().items():
            self.log(k, v)
        for k in CODE_KEYS:
            if k in scores:
                self.log(k, scores[k])
        if self.adversary is not None:
            self.log("robust_acc", self.adversary.robust_accuracy())
        self.check_tau()
        self.cursor = None
        step_scheduler(self.scheduler)
        if test_acc > self.best_acc:  # the best model before the checkpoint that records it
            self.best_acc = test_acc
            self.save_model(BEST_MODEL, test_acc)
        self.save(CHECKPOINT)
        tqdm.write(f"epoch {self.epoch}: train {row[1]:.2f}%  test {test_acc:.2f}%  "
                   f"loss {row[3]:.4f}  {row[4]:.1f}s")  # printed once it is safe on disk
        self.rebuild_outputs()
        if self.run_dir is not None and self.last_free_states:
            plots.plot_activity(self.model.visible(self.last_free_states),
                                self.run_dir / "neural_activity.png")
        if self.run_dir is not None and self.model.sparse_coding is not None:
            plots.plot_dictionary(self.model.sparse_coding.weight, self.run_dir / DICTIONARY)

    def fit(self, total: int) -> bool:
        """Train until `total` epochs are done; False if Ctrl-C or SIGTERM stopped it (with a
        checkpoint saved: the interrupted epoch's position, or the epoch it just finished)."""
        previous = {sig: signal.signal(sig, self._on_stop_signal) for sig in STOP_SIGNALS}
        self.check_tau()
        try:
            while self.epoch < total:
                self.run_epoch(total)
                if self.cursor.seen == len(self.train):  # also when stopped in its last batch
                    self.end_epoch()
                else:
                    self.save(CHECKPOINT)
                if self.stop_requested and self.epoch < total:
                    return False
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.save(FINAL_CHECKPOINT)
        self.save_model(FINAL_MODEL, (self.history["test_acc"] or [0.0])[-1])
        return True

    def _on_stop_signal(self, signum, frame) -> None:
        """First Ctrl-C or SIGTERM (a scheduler's notice): finish the batch, checkpoint, stop.
        A second one stops at once."""
        if self.stop_requested:
            raise KeyboardInterrupt
        self.stop_requested = True
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        tqdm.write(f"{name}: finishing this batch and saving a checkpoint (again to abort)")
