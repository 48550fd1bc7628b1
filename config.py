"""From parsed flags to a checked configuration and the model it describes.

Every check ends with a UsageError whose one line names the flag, its value and the fix.
"""

from __future__ import annotations

import difflib
import math
import shlex
from argparse import Namespace

from data_utils import TASKS
from errors import UsageError
from solvers import SOLVERS, Solver
from model_utils import (ACTIVATIONS, POOLS, PRECISIONS, EnergyNet, LCAConfig, build_cnn,
                         build_lcanet, build_mlp, conv_output_size, scale_init, set_precision)

# the family of each model: its layer lists (EPLCACNN is the seed scripts' name of LCACNN)
MODELS = {"MLP": "mlp", "CNN": "cnn", "VFMLP": "mlp", "VFCNN": "cnn", "LCACNN": "lca",
          "EPLCACNN": "lca"}
TODOS = {"train", "evaluate", "gducheck", "attack", "advtrain", "characteristic", "transfer",
         "corruptions", "report"}
TRAINING_TODOS = ("train", "advtrain")
# the todos that read a trained run (--load-path) and write beside it
READING_TODOS = ("evaluate", "attack", "characteristic", "transfer", "corruptions")
ALGS, LOSSES, OPTIMS = ("EP", "CEP", "CL", "CpL", "hEP", "BPTT", "BP"), ("mse", "cel"), (
    "sgd", "adam")
# the rules with a second phase, nudged or clamped: --betas, --nudge, --random-sign
NUDGING = ("EP", "CEP", "CL", "CpL")
CLAMPING = ("CL", "CpL")  # their second phase clamps the output layer
PHASED = (*NUDGING, "hEP")  # the rules whose gradient compares a free and a second phase
NUDGES = ("positive", "negative", "centered")
CONV_LISTS = ("kernels", "strides", "paddings", "pools")
CONV_FLAGS = ("channels",) + CONV_LISTS + ("fc",)
# the attack flags and the todos they apply to
ATTACK_FLAGS = {"attack": ("attack", "characteristic"), "attack_step": ("attack", "characteristic"),
                "predict_step": ("attack", "transfer"), "image_print": ("attack",),
                "save_examples": ("attack",), "examples": ("transfer",),
                "corruptions_dir": ("corruptions",),
                "train_attack_step": ("advtrain",), "adv_fraction": ("advtrain",),
                "eps": ("attack", "advtrain", "characteristic"),
                "attack_norm": ("attack", "advtrain", "characteristic"),
                "attack_images": ("attack", "advtrain", "characteristic"),
                "hsj_iter": ("attack", "characteristic"), "hsj_evals": ("attack", "characteristic")}
LCA_FLAGS = ("n_feats", "lca_lambda", "tau", "eta", "lca_stride", "lca_iters", "dict_loss",
             "lca_feedback", "lca_signed", "lca_raw_input")
# --dict_loss: what trains the dictionary (the seed scripts write combo for both)
DICT_LOSSES = {"recon": "recon", "class": "class", "both": "both", "combo": "both"}
LCA_DEFAULTS = {"lca_lambda": 0.25, "tau": 100.0, "eta": 1e-3, "lca_iters": 1,
                "dict_loss": "both", "lca_feedback": 1.0}
# what a saved run fixes (its architecture, and the optimizer its checkpoint holds): typed
# values of these are ignored when loading it; the others (T1, betas, mbs, ...) may change
ARCHITECTURE_KEYS = ("model", "task", "archi") + CONV_FLAGS + (
    "act", "loss", "softmax", "n_feats", "lca_stride", "lca_lambda", "dict_loss", "lca_feedback",
    "lca_signed", "lca_raw_input")
SAVED_KEYS = ARCHITECTURE_KEYS + ("scale", "alg", "optim", "lrs", "wds", "mmt", "lr_decay", "seed",
                                  "eta")
CONV_FILL = {"kernels": 5, "strides": 1, "paddings": 0, "pools": "m"}
CLIPPED = ("hard_sigmoid", "my_hard_sig", "ctrd_hard_sig")  # activations with flat clipped ends
FLOAT_FLAGS = ("lrs", "wds", "betas", "mmt", "scale", "eps", "lca_lambda", "tau", "eta",
               "lca_feedback", "dropouts", "adv_fraction", "tol")
# value ranges of single flags: (test, what is wrong and the fix), checked entry by entry
MAX_STEPS, MAX_BETA, MAX_SCALE, MAX_SEED = 100_000, 100.0, 100.0, 2**63 - 1
MAX_ANDERSON_M = 100
# the least nudge whose effect on the states survives their rounding (float32; gducheck: float64)
MIN_NUDGE, MIN_NUDGE_FLOAT64 = 1e-6, 1e-12
RANGES = {
    "lrs": (lambda v: v >= 0, "a learning rate must be 0 (a frozen layer) or more; give e.g. 0.05"),
    "wds": (lambda v: 0 <= v <= 1, "weight decay must be in [0, 1] (above, it swamps the "
            "gradient); give e.g. 3e-4 (or 0)"),
    "mmt": (lambda v: 0 <= v < 1, "SGD momentum must be in [0, 1); give e.g. 0.9 (or 0)"),
    "scale": (lambda v: 0 < v <= MAX_SCALE,
              f"the init factor must be in (0, {MAX_SCALE:g}]; give e.g. 0.5, or leave it out"),
    "betas": (lambda v: abs(v) <= MAX_BETA,
              f"each beta must be in [-{MAX_BETA:g}, {MAX_BETA:g}]; give e.g. --betas 0 0.5"),
    "seed": (lambda v: 0 <= v <= MAX_SEED, f"the seed must be in [0, 2**63 - 1 = {MAX_SEED}]"),
    "device": (lambda v: v >= 0, "a GPU index is 0 or more; leave --device out for GPU 0 (or "
               "the CPU when there is none)"),
    "lca_lambda": (lambda v: v >= 0, "the threshold must be 0 or more; give e.g. 0.25"),
    "tau": (lambda v: 1 <= v <= 1e6, "the LCA time constant counts iterations: give a value in "
            "[1, 1e6] (below 1 a step overshoots), e.g. 100"),
    "eta": (lambda v: v >= 0, "the dictionary step must be 0 or more; give e.g. 0.001"),
    "lca_iters": (lambda v: 1 <= v <= MAX_STEPS, f"give 1 to {MAX_STEPS:,} LCA iterations per "
                  "network step"),
    "lca_feedback": (lambda v: 0 < v <= MAX_SCALE, f"the top-down scale must be in (0, "
                     f"{MAX_SCALE:g}]; give e.g. 1"),
    "dropouts": (lambda v: 0 < v <= 1, "a keep probability is in (0, 1]; give e.g. 0.9, or 1 "
                 "to keep every unit of a layer"),
    "eps": (lambda v: v >= 0, "a perturbation radius is 0 or more; give e.g. 0.03"),
    "adv_fraction": (lambda v: 0 < v <= 1, "the adversarial share of a batch is in (0, 1]; "
                     "give e.g. 0.5, or leave it out for 1"),
    "image_print": (lambda v: 1 <= v <= 1000, "give 1 to 1000 image pairs"),
    "attack_images": (lambda v: v >= 1, "give 1 or more test images"),
    "hsj_iter": (lambda v: 1 <= v <= 10_000, "give 1 to 10,000 HopSkipJump iterations, e.g. 50"),
    "hsj_evals": (lambda v: 1 <= v <= 10**7, "give 1 to 10,000,000 queries per gradient "
                  "estimate, e.g. 10000"),
    "attack_step": (lambda v: 1 <= v <= MAX_STEPS, f"give 1 to {MAX_STEPS:,} free steps"),
    "predict_step": (lambda v: 1 <= v <= MAX_STEPS, f"give 1 to {MAX_STEPS:,} free steps"),
    "train_attack_step": (lambda v: 1 <= v <= MAX_STEPS, f"give 1 to {MAX_STEPS:,} free steps"),
    "tol": (lambda v: v > 0, "the relative change at which a phase stops must be above 0; "
            "give e.g. 1e-4"),
    "check_every": (lambda v: 1 <= v <= MAX_STEPS, f"give 1 to {MAX_STEPS:,} steps between "
                    "convergence checks, e.g. 10"),
    "anderson_m": (lambda v: 1 <= v <= MAX_ANDERSON_M, f"Anderson combines 1 to "
                   f"{MAX_ANDERSON_M} past steps; give e.g. 5"),
}
# the least value of each entry of the architecture lists, and what the entry is
ARCH_MIN = {"archi": (1, "a layer size"), "channels": (1, "a channel count"),
            "kernels": (1, "a kernel size"), "strides": (1, "a stride"),
            "paddings": (0, "a padding"), "fc": (1, "a layer size"),
            "n_feats": (1, "a number of atoms"), "lca_stride": (1, "a stride")}
# beyond these a model does not fit any memory: weights, and state numbers per sample
MAX_WEIGHTS, MAX_UNITS = 2**31, 2**27
PATH_FLAGS = {"load_path": "a results folder such as results/EP/mse/2026-01-01/12-00-00",
              "corruptions_dir": "the folder of a -C benchmark, e.g. data/CIFAR-10-C",
              "results_dir": "a folder for the results (default: results)",
              "data_dir": "the folder of the torchvision datasets (default: ./data)"}
FROM_CHECKPOINT = "saved in the --load-path run's checkpoint"


class FlagError(UsageError):
    """A bad value of the flags `dests` (their dest names): validate says which of them a
    --load-path run's checkpoint gave."""

    def __init__(self, message: str, *dests: str):
        super().__init__(message)
        self.dests = dests


def flag(dest: str) -> str:
    """The flag as the user types it (seed spellings: --load-path but --lca_lambda)."""
    return "--" + (dest if dest in LCA_FLAGS or dest in ("T1", "T2") else dest.replace("_", "-"))


def one_of(dest: str, value: str, choices) -> None:
    if value not in choices:
        near = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.75)
        hint = f" (did you mean {near[0]}?)" if near else ""
        raise FlagError(f"{flag(dest)} {value!r} is unknown; choose one of "
                        f"{', '.join(choices)}{hint}", dest)


def entries(args: Namespace, dest: str) -> list:
    """A flag's value as a list (empty when it is not set)."""
    value = getattr(args, dest)
    return [] if value is None else list(value) if isinstance(value, list) else [value]


def from_saved(args: Namespace, typed: set[str], saved: dict) -> dict:
    """The saved run's values that a resume uses: all but the typed ones it does not fix, the
    attack flags only to resume advtrain (an attack takes its own, not the training's), and
    never --device (the machine that resumes may have other GPUs, or none) nor report's
    folders."""
    known = vars(args)
    return {k: v for k, v in saved.items() if k in known and (k not in typed or k in SAVED_KEYS)
            and (k not in ATTACK_FLAGS or args.todo == "advtrain")
            and k not in ("device", "folders")}


def merge_saved(args: Namespace, typed: set[str], saved: dict) -> Namespace:
    """A saved run's arguments, overridden by flags typed now except those it fixes."""
    merged = dict(vars(args))
    for key, value in from_saved(args, typed, saved).items():
        if key in typed and merged[key] != value:
            print(f"notice: {flag(key)} ignored: the saved run's value {value!r} is used")
        merged[key] = value
    return Namespace(**merged)


def checkpoint_keys(args: Namespace, typed: set[str], saved: dict) -> frozenset[str]:
    """The dest names whose value merge_saved takes from the saved run (pass to validate)."""
    return frozenset(from_saved(args, typed, saved))


def differing_flags(saved: dict, args: Namespace) -> list[str]:
    """The architecture flags whose value differs between a saved run and `args`."""
    return [flag(k) for k in ARCHITECTURE_KEYS if k in saved and saved[k] != getattr(args, k)]


def fill_defaults(args: Namespace) -> None:
    """Architecture lists left out take their documented defaults (one entry per layer)."""
    (c, h, w), classes, _ = TASKS[args.task]
    family = MODELS[args.model]
    if family == "mlp":
        defaults = {"archi": [c * h * w, 512, classes]}
    else:
        atoms = args.n_feats or 32
        channels = [atoms, atoms, 64] if family == "lca" else [32, 64]
        n = max(1, len(args.channels or channels) - int(family == "lca"))  # LCA is layer 0
        defaults = {"channels": channels, "fc": [classes]}
        defaults.update({k: fill * n if k == "pools" else [fill] * n
                         for k, fill in CONV_FILL.items()})
        if family == "lca":  # the code is not pooled; --lca_stride is its stride
            defaults["pools"] = "i" + defaults["pools"][1:]
            defaults["strides"][0] = args.lca_stride or 1
            defaults.update(LCA_DEFAULTS)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def trains(args: Namespace) -> bool:
    """The todos that train (and take the training flags' checks)."""
    return args.todo in TRAINING_TODOS


def validate(args: Namespace, typed: set[str],
             from_checkpoint: frozenset[str] = frozenset()) -> None:
    """Check the flags against each other; fill the per-layer defaults. `from_checkpoint`:
    the dest names whose value a --load-path run gave (checkpoint_keys), named in errors."""
    try:
        check_all(args, typed, from_checkpoint)
    except FlagError as e:
        saved = [flag(d) for d in dict.fromkeys(e.dests) if d in from_checkpoint]
        if not saved:
            raise
        raise UsageError(f"{e} ({', '.join(saved)} {FROM_CHECKPOINT})") from None


def check_all(args: Namespace, typed: set[str], from_checkpoint: frozenset[str]) -> None:
    """validate's checks, in order: each flag alone, then the flags against each other."""
    check_values(args)
    one_of("model", args.model, MODELS)
    one_of("todo", args.todo, sorted(TODOS))
    one_of("task", args.task, TASKS)
    one_of("act", args.act, ACTIVATIONS)
    one_of("alg", args.alg, ALGS)
    one_of("loss", args.loss, LOSSES)
    one_of("optim", args.optim, OPTIMS)
    one_of("dynamics", args.dynamics, ("explicit", "autograd"))
    one_of("precision", args.precision, PRECISIONS)
    one_of("solver", args.solver, SOLVERS)
    one_of("nudged_solver", args.nudged_solver, SOLVERS)
    check_solver(args, typed)
    check_compile(args)
    for dest, todos in ATTACK_FLAGS.items():
        if dest in typed and args.todo not in todos:
            raise FlagError(f"{flag(dest)} only applies with "
                            f"{' or '.join('--todo ' + t for t in todos)}; remove it", dest)
    for dest in LCA_FLAGS if MODELS[args.model] != "lca" else ():
        if dest in typed:
            raise FlagError(f"{flag(dest)} only applies with --model LCACNN; remove it", dest)
    is_cnn = MODELS[args.model] != "mlp"
    for dest in (CONV_FLAGS if not is_cnn else ("archi",)):
        if dest in typed:
            raise FlagError(f"{flag(dest)} does not apply to --model {args.model}; remove it",
                            dest, "model")
    check_lca(args, typed)
    if args.alg not in NUDGING and trains(args):  # evaluate, gducheck and attack ignore --alg
        for dest in ("thirdphase", "random_sign"):
            if getattr(args, dest):
                raise FlagError(f"{flag(dest)} only applies with --alg "
                                f"{', '.join(NUDGING)} (not {args.alg})", dest, "alg")
    check_cep(args, typed)
    check_nudge(args, typed)
    if args.softmax and args.loss != "cel":
        raise FlagError("--softmax needs --loss cel: the read-out is trained with cross-entropy",
                        "softmax", "loss")
    if args.todo in READING_TODOS and not args.load_path:
        raise UsageError(f"--todo {args.todo} needs --load-path DIR (a results folder with "
                         "model.pt)")
    if args.folders and args.todo != "report":
        raise UsageError(f"{' '.join(args.folders)}: folders are given to --todo report only; "
                         "other todos take --load-path DIR")
    if args.todo == "report" and not args.folders:
        raise UsageError("--todo report needs folders: --todo report DIR [DIR ...] (e.g. "
                         "results/)")
    if args.todo == "report" and args.load_path:
        raise UsageError(f"--load-path {args.load_path}: --todo report reads the folders it is "
                         "given; give DIR instead (--todo report DIR)")
    if args.todo == "corruptions" and not args.corruptions_dir:
        raise UsageError("--todo corruptions needs --corruptions-dir DIR (CIFAR-10-C, CIFAR-100-C "
                         "or MNIST-C, as distributed; check/make_corruptions.py writes one)")
    if args.todo == "transfer" and not args.examples:
        raise UsageError("--todo transfer needs --examples FILE [FILE ...] (examples_*.npz of "
                         "another run's --todo attack --save-examples)")
    check_attack(args, typed)
    if args.optim == "adam" and "mmt" in typed and "mmt" not in from_checkpoint:
        raise FlagError(f"--mmt {args.mmt:g}: --optim adam has no momentum; remove --mmt or use "
                        "--optim sgd", "mmt", "optim")
    check_vf_and_gdu(args, typed)
    check_steps(args)
    check_signs(args, typed)
    fill_defaults(args)
    check_holomorphic(args, typed)
    n_layers = check_architecture(args)
    if "dropouts" in typed and not trains(args):
        raise FlagError(f"--dropouts only applies while training (--todo train or advtrain); "
                        f"--todo {args.todo} runs without dropout: remove it", "dropouts")
    if args.dropouts is not None and len(args.dropouts) != n_layers:
        raise FlagError(f"--dropouts has {len(args.dropouts)} entries but the model has "
                        f"{n_layers} layers of weights; give one keep probability per layer they "
                        "read (the input first)", "dropouts")
    for dest, fill in (("lrs", 5e-4), ("wds", 0.0)):
        values = getattr(args, dest)
        if values is None:
            setattr(args, dest, [fill] * n_layers)
        elif len(values) != n_layers:
            raise FlagError(f"{flag(dest)} has {len(values)} entries but the model has "
                            f"{n_layers} layers of weights; give one per layer", dest)


def check_solver(args: Namespace, typed: set[str]) -> None:
    """--tol, --check-every and --anderson-m where they apply; gducheck's theorem is that of
    the synchronous steps, run in full."""
    if "check_every" in typed and args.tol is None:
        raise FlagError(f"--check-every {args.check_every} applies with --tol (how often a phase "
                        "checks whether it has converged); add --tol or remove it",
                        "check_every", "tol")
    if "anderson_m" in typed and args.solver != "anderson":
        raise FlagError(f"--anderson-m {args.anderson_m} applies with --solver anderson; remove "
                        "it or use --solver anderson", "anderson_m", "solver")
    if args.alg == "BP" and args.todo != "gducheck" and {"solver", "tol"} & typed:
        raise FlagError("--solver, --tol: a BP-trained model (--alg BP) runs feed-forward, "
                        "without a relaxation; remove them", "solver", "tol", "alg")
    for dest in ("solver", "nudged_solver"):
        if getattr(args, dest) == "anderson" and args.act in CLIPPED:
            raise FlagError(f"{flag(dest)} anderson: Anderson acceleration does not speed up the "
                            f"piecewise-linear map of --act {args.act} (more sweeps than plain "
                            "even-odd ones on the CNN line: BENCHMARKS.md); use evenodd", dest,
                            "act")
    if "nudged_solver" in typed and not (args.alg == "EP" and trains(args)):
        raise FlagError("--nudged-solver applies to EP's nudged phases while training (--todo "
                        "train or advtrain, --alg EP); remove it", "nudged_solver", "alg")
    if args.todo == "gducheck" and "tol" in typed:
        raise FlagError(f"--tol {args.tol:g}: the GDU check compares EP and BPTT over exactly "
                        "--T1 and --T2 synchronous steps; remove --tol", "tol")


def solver_notice(args: Namespace, typed: set[str], saved: dict) -> None:
    """A run relaxed by another solver than it was trained with says so: these networks have
    several fixed points, and each solver settles at its own."""
    trained = saved.get("solver", "sync")
    if "solver" in typed and args.solver != trained:
        print(f"notice: --load-path's run was trained with --solver {trained}; this one relaxes "
              f"with --solver {args.solver}, whose fixed points may differ")


def check_compile(args: Namespace) -> None:
    """--compile compiles the explicit step, with the C++ compiler torch.compile builds with."""
    if not args.compile:
        return
    if args.dynamics != "explicit":
        raise FlagError("--compile compiles the explicit step; use --dynamics explicit or remove "
                        "--compile", "compile", "dynamics")
    from torch._inductor.cpp_builder import get_cpp_compiler
    try:
        get_cpp_compiler()
    except (RuntimeError, OSError) as e:
        raise FlagError(f"--compile: torch.compile finds no C++ compiler ({str(e).splitlines()[0]}"
                        "); install g++ or set CXX, or remove --compile", "compile") from None


def check_values(args: Namespace) -> None:
    """Each flag on its own: finite numbers in their range, paths that are not empty."""
    if len(args.betas) != 2:  # with nargs="+" the parser leaves the count to this check
        raise FlagError(f"--betas {' '.join(f'{b:g}' for b in args.betas)}: give exactly two "
                        "values, BETA1 (free phase) and BETA2 (nudged phase), e.g. --betas 0 0.1",
                        "betas")
    for dest in FLOAT_FLAGS:
        for v in entries(args, dest):
            if not math.isfinite(v):
                hint = " (1e999 and beyond overflow to inf)" if math.isinf(v) else ""
                raise FlagError(f"{flag(dest)} {v}: not a finite number{hint}; give a finite "
                                "value", dest)
    for dest, (ok, rule) in RANGES.items():
        for v in entries(args, dest):
            if not ok(v):
                raise FlagError(f"{flag(dest)} {v:g}: {rule}" if isinstance(v, float) else
                                f"{flag(dest)} {v}: {rule}", dest)
    for dest, what in PATH_FLAGS.items():
        value = getattr(args, dest)
        if value is not None and not value.strip():
            raise FlagError(f"{flag(dest)} {value!r} is empty; give {what}", dest)


def is_vf(args: Namespace) -> bool:
    return args.model.startswith("VF")


def check_vf_and_gdu(args: Namespace, typed: set[str]) -> None:
    """Flags of the VF models and of the GDU check that only make sense together."""
    if args.same_update and not (is_vf(args) and (args.alg == "EP" or not trains(args))):
        raise FlagError("--same-update only applies to --model VFMLP or VFCNN with --alg EP; "
                        "remove it", "same_update", "model", "alg")
    if is_vf(args) and args.alg == "BP":
        raise FlagError(f"--alg BP: a feed-forward pass never uses the feedback weights of "
                        f"--model {args.model}; use --alg EP or BPTT", "alg", "model")
    wrong_todo = not trains(args) and "check_thm" in typed  # a saved run's is ignored
    if args.check_thm and (wrong_todo or trains(args) and args.alg not in ("EP", "CEP")):
        raise FlagError("--check-thm checks EP while it trains: use it with --todo train "
                        "--alg EP or CEP, or run --todo gducheck", "check_thm", "alg")
    if (args.check_thm or args.todo == "gducheck") and args.betas[0] != 0:
        raise FlagError(f"--betas {args.betas[0]:g} {args.betas[1]:g}: the GDU check starts "
                        f"from the free fixed point; give --betas 0 {args.betas[1]:g}", "betas")


def check_attack(args: Namespace, typed: set[str]) -> None:
    """--attack, --attack-norm and --eps fit each other; advtrain trains at one radius."""
    if args.todo not in ("attack", "advtrain", "characteristic", "transfer"):
        return
    from attack import ATTACKS, NORMS  # ART takes 2 s to load: only where attacks are asked for

    if args.todo == "characteristic":
        check_characteristic(args, typed)
        if args.attack is None:
            return

    for dest in ("attack_step", "predict_step", "train_attack_step"):
        if dest in typed and args.alg == "BP":
            raise FlagError(f"{flag(dest)}: a BP-trained model (--alg BP) predicts and is "
                            "attacked feed-forward, without free steps; remove it", dest, "alg")
    if args.todo == "transfer":
        if len(entries(args, "predict_step")) > 1:
            raise FlagError("--predict-step: --todo transfer evaluates with one count of free "
                            "steps; give one value", "predict_step")
        return
    args.attack = args.attack or ["pgd"]
    args.attack_norm = args.attack_norm or ["inf"]
    for name in args.attack:
        one_of("attack", name, ATTACKS)
    for norm in args.attack_norm:
        one_of("attack_norm", norm, NORMS)
    norms = {NORMS[n] for n in args.attack_norm}
    if "cw" in args.attack and "2" not in norms:
        raise FlagError("--attack cw is Carlini-Wagner's L2 attack: add 2 to --attack-norm "
                        "(it runs for L2 only)", "attack", "attack_norm")
    for dest in ("hsj_iter", "hsj_evals"):
        if dest in typed and "hsj" not in args.attack:
            raise FlagError(f"{flag(dest)} applies to --attack hsj; remove it or add hsj to "
                            "--attack", dest, "attack")
    if "inf" in norms and any(e > 1 for e in args.eps or []):
        raise FlagError(f"--eps {max(args.eps):g}: pixels lie in [0, 1], so an Linf radius "
                        "above 1 changes nothing more; give at most 1", "eps", "attack_norm")
    if args.todo == "advtrain":
        for dest in ("eps", "attack_norm"):
            if len(entries(args, dest)) > 1:
                raise FlagError(f"{flag(dest)}: --todo advtrain trains at one radius in one "
                                "norm; give one value", dest)
        args.adv_fraction = 1.0 if args.adv_fraction is None else args.adv_fraction


def check_characteristic(args: Namespace, typed: set[str]) -> None:
    """--todo characteristic: the free dynamics of an EP or BPTT run, on clean images or on
    one attack's at one radius in one norm."""
    if args.alg == "BP":
        raise FlagError("--todo characteristic follows the free steps of a prediction; a "
                        "BP-trained model (--alg BP) predicts feed-forward, without them",
                        "alg")
    if args.attack is None:
        for dest in ("eps", "attack_norm", "attack_step", "hsj_iter", "hsj_evals"):
            if dest in typed:
                raise FlagError(f"{flag(dest)} applies to the adversarial images of --attack "
                                "NAME; add --attack (e.g. pgd) or remove it", dest)
        return
    if args.eps is None:
        raise FlagError(f"--attack {args.attack[0]}: --todo characteristic follows its images at "
                        "one radius; give --eps E", "eps")
    for dest in ("attack", "eps", "attack_norm", "attack_step"):
        if len(entries(args, dest)) > 1:
            raise FlagError(f"{flag(dest)}: --todo characteristic follows one attack at one "
                            "radius in one norm, through one unroll; give one value", dest)


def check_nudge(args: Namespace, typed: set[str]) -> None:
    """--nudge, with its old spellings (--thirdphase: centered; a negative beta2 alone:
    negative), and the clamping rules' limits. Sets --thirdphase where centered."""
    if "nudge" in typed and "thirdphase" not in typed:  # what is typed now decides
        args.thirdphase = False
    elif "thirdphase" in typed and "nudge" not in typed:
        args.nudge = "centered"
    if args.nudge is None:  # (also a run saved before --nudge existed)
        args.nudge = "centered" if args.thirdphase else "positive"
    one_of("nudge", args.nudge, NUDGES)
    if "nudge" in typed and trains(args) and args.alg not in NUDGING:
        raise FlagError(f"--nudge applies to the rules with a second phase (--alg "
                        f"{', '.join(NUDGING)}), not {args.alg}; remove it", "nudge", "alg")
    if args.thirdphase and args.nudge != "centered":
        raise FlagError(f"--thirdphase is --nudge centered, and --nudge is {args.nudge}; remove "
                        "one of them", "thirdphase", "nudge")
    args.thirdphase = args.nudge == "centered"
    if args.nudge == "negative" and args.betas[1] < 0:
        raise FlagError(f"--nudge negative runs the second phase at -beta2, and beta2 is "
                        f"{args.betas[1]:g}: give --betas {args.betas[0]:g} "
                        f"{-args.betas[1]:g}", "nudge", "betas")
    if args.nudge == "negative" and args.random_sign:
        raise FlagError("--random-sign draws the sign of beta2 each batch; --nudge negative "
                        "fixes it: remove one of them", "random_sign", "nudge")
    if args.alg not in CLAMPING or not trains(args):
        return
    if args.softmax:
        raise FlagError(f"--alg {args.alg} clamps the output layer, and with --softmax the "
                        "output is a read-out outside the energy, with no state to clamp; "
                        "remove --softmax or use --alg EP", "softmax", "alg")
    if args.betas[0] != 0:
        raise FlagError(f"--betas {args.betas[0]:g} {args.betas[1]:g}: --alg {args.alg}'s "
                        f"first phase is free; give --betas 0 {args.betas[1]:g}", "betas", "alg")
    if args.alg == "CL" and ("betas" in typed or args.nudge != "positive" or args.random_sign):
        raise FlagError("--alg CL clamps the output to the target, with no beta and no sign; "
                        "remove --betas, --nudge (--thirdphase) and --random-sign (--alg CpL "
                        "clamps it to "
                        "(1 - beta) o* + beta y, at either sign or both)", "alg", "betas",
                        "nudge")


def check_holomorphic(args: Namespace, typed: set[str]) -> None:
    """--alg hEP where the dynamics are holomorphic in beta (its exactness needs them)."""
    from holomorphic import HOLOMORPHIC_ACTS, HOLOMORPHIC_POOLS

    hep = args.alg == "hEP" and trains(args)
    if "holo_points" in typed and not hep:
        raise FlagError("--holo-points applies to --alg hEP while training; remove it",
                        "holo_points", "alg")
    if not hep:
        return
    if args.holo_points < 2:
        raise FlagError(f"--holo-points {args.holo_points}: the circle of nudges needs at least "
                        "2 points (the default 4; 2 is symmetric EP)", "holo_points")
    why = None
    if args.model not in ("MLP", "CNN"):
        why = (f"--model {args.model}: defined for MLP and CNN (no feedback weights, no sparse "
               "code)", "model")
    elif args.act not in HOLOMORPHIC_ACTS:
        why = f"--act {args.act} has corners; use {', '.join(HOLOMORPHIC_ACTS)}", "act"
    elif args.model == "CNN" and set(args.pools) - set(HOLOMORPHIC_POOLS):
        why = ("--pools: max pooling has corners; use a (average) or i (none)", "pools")
    elif args.loss != "mse":
        why = "--loss cel: use mse, whose square is holomorphic", "loss"
    elif args.precision == "bf16":
        why = "--precision bf16: there is no complex bfloat16; use fp32", "precision"
    elif args.compile:
        why = "--compile: the complex phases are not compiled; remove it", "compile"
    elif args.dynamics != "explicit":
        why = ("--dynamics autograd: autograd of a complex Phi is not the holomorphic "
               "derivative; use --dynamics explicit", "dynamics")
    elif args.betas[0] != 0:
        why = f"--betas {args.betas[0]:g}: the free phase is at beta 0; give --betas 0 B", "betas"
    if why:
        raise FlagError(f"--alg hEP needs dynamics holomorphic in beta: {why[0]}", why[1], "alg")


def check_cep(args: Namespace, typed: set[str]) -> None:
    """--alg CEP on the models and precisions the published rule is defined for."""
    if args.cep_debug and not (args.alg == "CEP" and trains(args)):
        if "cep_debug" in typed:  # a saved run's is ignored
            raise FlagError("--cep-debug applies to --alg CEP while training; remove it",
                            "cep_debug", "alg")
        return
    if args.alg != "CEP" or not trains(args):
        return
    if args.model not in ("MLP", "CNN"):  # the published rule has no feedback or code update
        raise FlagError(f"--alg CEP is defined (as published) for --model MLP and CNN, not "
                        f"{args.model}: use --alg EP", "alg", "model")
    if args.optim == "adam" and not args.load_path:
        print("notice: --alg CEP with --optim adam takes T2 Adam steps a batch, each about lr in "
              "size whatever its update (the last nudged steps' updates are mostly rounding); "
              "the published CEP uses --optim sgd")
    if args.precision == "bf16":
        raise FlagError("--precision bf16 with --alg CEP: each update pairs two consecutive "
                        "nudged states, closer than bfloat16's rounding; use fp32 or tf32",
                        "precision", "alg")


def check_lca(args: Namespace, typed: set[str]) -> None:
    """LCANet's own flags: --dict_loss spelled as the seed scripts do, --eta only where the
    unsupervised step runs."""
    if MODELS[args.model] != "lca":
        return
    if args.dict_loss is not None:
        one_of("dict_loss", args.dict_loss, DICT_LOSSES)
        args.dict_loss = DICT_LOSSES[args.dict_loss]
    if "eta" in typed and args.dict_loss == "class":
        raise FlagError(f"--eta {args.eta:g}: with --dict_loss class only the classification "
                        "gradient trains the dictionary; remove --eta or use --dict_loss both",
                        "eta", "dict_loss")


def check_steps(args: Namespace) -> None:
    for dest in ("T1", "mbs", "epochs"):
        if getattr(args, dest) < 1:
            raise FlagError(f"{flag(dest)} must be at least 1 (got {getattr(args, dest)})", dest)
    if args.T2 < 0:
        raise FlagError(f"--T2 must be at least 0 (got {args.T2})", "T2")
    for dest in ("T1", "T2"):
        if getattr(args, dest) > MAX_STEPS:
            raise FlagError(f"{flag(dest)} {getattr(args, dest)}: more than {MAX_STEPS:,} steps "
                            "per phase; the published runs use at most 250", dest)
    gdu = args.todo == "gducheck" or args.check_thm
    if (args.alg == "BPTT" and trains(args) or gdu) and args.T2 > args.T1:
        raise FlagError(f"--T2 {args.T2} > --T1 {args.T1}: BPTT back-propagates through the last "
                        "T2 of the T1 free steps; make T2 <= T1", "T2", "T1")
    if gdu and args.T2 < 1:
        raise FlagError("--T2 0: the GDU check compares the T2 nudged steps; give --T2 >= 1", "T2")
    if trains(args) and args.T2 < 1 and args.alg in (*PHASED, "BPTT"):
        why = ("BPTT back-propagates through the last T2 steps" if args.alg == "BPTT" else
               "EP's nudged phase needs at least one step to move the states")
        raise FlagError(f"--T2 0: {why}; give --T2 >= 1", "T2", "alg")
    if (args.alg in PHASED or args.todo == "gducheck") and \
            args.betas[0] == args.betas[1]:
        raise FlagError("--betas: beta1 and beta2 must differ (EP divides by beta2 - beta1)",
                        "betas")
    ep = args.todo == "gducheck" or trains(args) and args.alg in PHASED
    least, dtype = (MIN_NUDGE_FLOAT64, "float64") if args.todo == "gducheck" else (
        MIN_NUDGE, "float32")
    if ep and 0 < abs(args.betas[1] - args.betas[0]) < least:
        raise FlagError(f"--betas {args.betas[0]:g} {args.betas[1]:g}: a nudge that small moves "
                        f"the {dtype} states by less than their rounding, and EP divides their "
                        f"difference by it; give a beta2 - beta1 of at least {least:g} (the "
                        "published lines use 0.1 to 1)", "betas")


def check_signs(args: Namespace, typed: set[str]) -> None:
    """--random-sign and --thirdphase: which sign of beta2 the nudged phase(s) use."""
    beta1, beta2 = args.betas
    ep = args.todo == "gducheck" or trains(args) and args.alg in NUDGING
    if args.thirdphase and ep and beta2 == 0:
        raise FlagError(f"--betas {beta1:g} 0: --thirdphase nudges at +beta2 and -beta2 and "
                        "divides by 2 beta2; give a beta2 other than 0", "betas", "thirdphase")
    if not args.random_sign:
        return
    if args.todo == "gducheck" and "random_sign" in typed:  # a saved run's is ignored
        raise FlagError("--random-sign does not apply to --todo gducheck: the check chooses the "
                        "sign of beta2 itself (+beta2, and -beta2 with --thirdphase); remove it",
                        "random_sign")
    if not trains(args):
        return
    if args.thirdphase and args.alg != "CEP" and {"random_sign", "thirdphase", "nudge"} & typed:
        raise FlagError("--random-sign has no effect with --thirdphase, whose nudged phases "
                        "already use +beta2 and -beta2; remove one of them", "random_sign",
                        "thirdphase")
    if beta1 != 0:
        raise FlagError(f"--betas {beta1:g} {beta2:g}: --random-sign draws the sign of beta2 "
                        f"only when beta1 is 0; give --betas 0 {beta2:g}", "betas", "random_sign")


def check_architecture(args: Namespace) -> int:
    """Layer sizes fit the task and each other; returns the number of weight layers."""
    (c, h, w), classes, _ = TASKS[args.task]
    family = MODELS[args.model]
    for dest, (low, what) in ARCH_MIN.items():
        for v in entries(args, dest) if family != "mlp" or dest == "archi" else []:
            if v < low:
                raise FlagError(f"{flag(dest)} {v}: {what} must be at least {low}", dest)
    if family == "mlp":
        if args.archi[0] != c * h * w:
            raise FlagError(f"--archi starts with {args.archi[0]} but --task {args.task} inputs "
                            f"have {c * h * w} pixels; start it with {c * h * w}", "archi", "task")
        if len(args.archi) < 2:
            raise FlagError("--archi needs at least an input and an output size", "archi")
        last = args.archi[-1]
        n_layers = len(args.archi) - 1
        last_flag = "--archi"
        sizes = args.archi
        weights = sum(a * b for a, b in zip(sizes, sizes[1:]))
        units, size_flags = sum(sizes[1:]), shlex.join(["--archi"] + [str(a) for a in sizes])
    else:
        layer_outputs = check_layer_lists(args) if family == "lca" else args.channels
        n = len(layer_outputs)
        for dest in CONV_LISTS:
            if len(getattr(args, dest)) != n:
                raise FlagError(f"{flag(dest)} has {len(getattr(args, dest))} entries but "
                                f"--channels has {n}; give one per conv layer", dest, "channels")
        for letter in args.pools:
            one_of("pools", letter, POOLS)
        size, cin, weights, units = h, c, 0, 0
        for k, (cout, kern, st, pad, pool) in enumerate(zip(layer_outputs, args.kernels,
                                                            args.strides, args.paddings,
                                                            args.pools)):
            if pad >= kern:
                raise FlagError(f"--paddings {pad}: conv layer {k + 1} has kernel {kern}, so a "
                                "border that wide adds outputs that never see the input; give "
                                f"at most {kern - 1}", "paddings", "kernels")
            units += cout * ((size + 2 * pad - kern) // st + 1) ** 2
            weights += (cin * kern * kern + 1) * cout
            size, cin = conv_output_size(size, kern, st, pad, pool), cout
            if size < 1:
                raise FlagError(f"conv layer {k + 1} shrinks the {h}x{w} input below 1 pixel; "
                                "use smaller --kernels/--strides, more --paddings or fewer "
                                "pools in --pools", "kernels", "strides", "paddings", "pools")
        fc_sizes = [cin * size * size] + args.fc
        weights += sum((a + 1) * b for a, b in zip(fc_sizes, fc_sizes[1:]))
        units += sum(args.fc)
        last = args.fc[-1]
        n_layers = n + len(args.fc)
        last_flag = "--fc"
        size_flags = shlex.join(["--channels"] + [str(a) for a in args.channels] + ["--fc"]
                                + [str(a) for a in args.fc])
    if weights > MAX_WEIGHTS or units > MAX_UNITS:
        raise FlagError(f"{size_flags}: the model would have {weights:.3g} weights and "
                        f"{units:.3g} state numbers per sample (at most {MAX_WEIGHTS:.3g} and "
                        f"{MAX_UNITS:.3g}); use smaller layers", "archi", "channels", "fc")
    if last != classes:
        raise FlagError(f"{last_flag} ends with {last} but --task {args.task} has {classes} "
                        f"classes; end it with {classes}", last_flag[2:], "task")
    if args.softmax and n_layers < 2:
        raise FlagError("--softmax needs a hidden layer before the read-out", "softmax")
    return n_layers


def check_layer_lists(args: Namespace) -> list[int]:
    """LCANet's reading of the conv lists (the seed scripts'): entry 0 of --kernels, --strides,
    --paddings and --pools is the LCA layer, then one entry per conv layer; --channels is the
    number of atoms, then the conv layers' channels from their input on, so its second entry
    repeats the first (`--channels 32 32 64 --kernels 5 5`: 32 atoms of 5x5, one 5x5 conv
    32->64). The seed lines' one trailing entry of --strides, --paddings and --pools is unused
    and dropped with a notice. Returns each layer's output channels."""
    channels, n = args.channels, len(args.channels) - 1
    if n < 1:
        raise FlagError(f"--channels {channels[0]}: LCANet reads the number of atoms, then the "
                        f"conv layers' channels from their input on; give e.g. --channels "
                        f"{channels[0]} {channels[0]} 64", "channels")
    if channels[1] != channels[0]:
        raise FlagError(f"--channels {' '.join(map(str, channels))}: the first conv layer reads "
                        f"the {channels[0]} atoms' codes, so the second entry must be "
                        f"{channels[0]} too", "channels")
    trailing = [flag(d) for d in ("strides", "paddings", "pools") if len(getattr(args, d)) == n + 1]
    if trailing:
        print(f"notice: {', '.join(trailing)}: the last entry is unused (LCANet has {n} layers "
              "of kernels: the LCA layer and the conv layers)")
        for dest in ("strides", "paddings", "pools"):
            if len(getattr(args, dest)) == n + 1:
                setattr(args, dest, getattr(args, dest)[:n])
    for dest in CONV_LISTS:
        if len(getattr(args, dest)) != n:
            raise FlagError(f"{flag(dest)} has {len(getattr(args, dest))} entries but --channels "
                            f"{' '.join(map(str, channels))} gives {n} layers (the LCA layer, "
                            f"then {n - 1} conv); give one entry per layer", dest, "channels")
    if args.pools[:1] not in ("i", ""):
        raise FlagError(f"--pools {args.pools}: the first letter is the LCA layer's, whose code "
                        "is not pooled; start --pools with i", "pools")
    for dest, entry in (("n_feats", "channels"), ("lca_stride", "strides")):
        value, listed = getattr(args, dest), getattr(args, entry)[0]
        if value is not None and value != listed:
            raise FlagError(f"{flag(dest)} {value} disagrees with {flag(entry)}, whose first "
                            f"entry ({listed}) is the LCA layer's; give one of them, or the same "
                            "value", dest, entry)
    args.n_feats, args.lca_stride = channels[0], args.strides[0]
    return channels[:1] + channels[2:]


def lca_config(args: Namespace) -> LCAConfig:
    return LCAConfig(args.n_feats, args.kernels[0], args.strides[0], args.paddings[0],
                     args.lca_lambda, args.tau, args.lca_iters, args.dict_loss != "recon",
                     args.eta if args.dict_loss != "class" else 0.0, not args.lca_signed,
                     not args.lca_raw_input, args.lca_feedback)


def build_model(args: Namespace) -> EnergyNet:
    shape = TASKS[args.task][0]
    if MODELS[args.model] == "mlp":
        model = build_mlp(args.archi, args.act, args.loss, args.softmax, is_vf(args))
    elif MODELS[args.model] == "lca":
        model = build_lcanet(shape, lca_config(args), args.channels[2:], args.kernels[1:],
                             args.strides[1:], args.paddings[1:], args.pools[1:], args.fc,
                             args.act, args.loss, args.softmax)
    else:
        model = build_cnn(shape, args.channels, args.kernels, args.strides, args.paddings,
                          args.pools, args.fc, args.act, args.loss, args.softmax, is_vf(args))
    if args.scale is not None:
        scale_init(model, args.scale)
    model.free_steps = args.T1  # what model(x) runs
    set_precision(model, args.precision)
    model.compiled = args.compile
    if args.solver != "sync" or args.nudged_solver != "sync" or args.tol is not None:
        model.solver = Solver(args.solver, args.tol, args.check_every, args.anderson_m)
        # a synchronous nudged phase runs all its T2 steps (its EP update is BPTT's through T2)
        tol = args.tol if args.nudged_solver != "sync" else None
        model.nudged_solver = Solver(args.nudged_solver, tol, args.check_every, args.anderson_m)
    return model


def hyperparameters_text(args: Namespace, argv: list[str], model_text: str) -> str:
    lines = [f"python main.py {shlex.join(argv)}", ""]
    lines += [f"{k}: {v}" for k, v in sorted(vars(args).items())]
    return "\n".join(lines + ["", model_text, ""])
