"""From parsed flags to a checked configuration and the model it describes.

Every check ends with a UsageError whose one line names the flag and the fix.
"""

from __future__ import annotations

import shlex
from argparse import Namespace

from data_utils import TASKS
from errors import UsageError
from model_utils import (ACTIVATIONS, POOLS, EnergyNet, build_cnn, build_mlp, conv_output_size,
                         scale_init)

MODELS = {"MLP": "mlp", "CNN": "cnn", "VFMLP": "mlp", "VFCNN": "cnn"}
LATER_MODELS = {"LCACNN", "EPLCACNN"}
TODOS = {"train", "evaluate", "gducheck"}
LATER_TODOS = {"attack", "advtrain"}
ALGS, LOSSES, OPTIMS = ("EP", "BPTT", "BP"), ("mse", "cel"), ("sgd", "adam")
CONV_LISTS = ("kernels", "strides", "paddings", "pools")
CONV_FLAGS = ("channels",) + CONV_LISTS + ("fc",)
ATTACK_FLAGS = ("eps", "image_print", "attack_step", "predict_step", "train_attack_step",
                "attack_norm")
LCA_FLAGS = ("n_feats", "lca_lambda", "tau", "eta", "lca_stride", "lca_iters", "dict_loss")
# what a saved run fixes (its architecture, and the optimizer its checkpoint holds): typed
# values of these are ignored when loading it; the others (T1, betas, mbs, ...) may change
ARCHITECTURE_KEYS = ("model", "task", "archi") + CONV_FLAGS + ("act", "loss", "softmax")
SAVED_KEYS = ARCHITECTURE_KEYS + ("scale", "alg", "optim", "lrs", "wds", "mmt", "lr_decay", "seed")
CONV_FILL = {"kernels": 5, "strides": 1, "paddings": 0, "pools": "m"}


def flag(dest: str) -> str:
    """The flag as the user types it (seed spellings: --load-path but --lca_lambda)."""
    return "--" + (dest if dest in LCA_FLAGS or dest in ("T1", "T2") else dest.replace("_", "-"))


def one_of(dest: str, value: str, choices) -> None:
    if value not in choices:
        raise UsageError(f"{flag(dest)} {value!r} is unknown; choose one of {', '.join(choices)}")


def merge_saved(args: Namespace, typed: set[str], saved: dict) -> Namespace:
    """A saved run's arguments, overridden by flags typed now except those it fixes."""
    merged = dict(vars(args))
    for key, value in saved.items():
        if key not in merged:
            continue
        if key in typed and key not in SAVED_KEYS:
            continue
        if key in typed and merged[key] != value:
            print(f"notice: {flag(key)} ignored: the saved run's value {value!r} is used")
        merged[key] = value
    return Namespace(**merged)


def differing_flags(saved: dict, args: Namespace) -> list[str]:
    """The architecture flags whose value differs between a saved run and `args`."""
    return [flag(k) for k in ARCHITECTURE_KEYS if k in saved and saved[k] != getattr(args, k)]


def fill_defaults(args: Namespace) -> None:
    """Architecture lists left out take their documented defaults (one entry per layer)."""
    (c, h, w), classes, _ = TASKS[args.task]
    if MODELS[args.model] == "mlp":
        defaults = {"archi": [c * h * w, 512, classes]}
    else:
        n = len(args.channels or [32, 64])
        defaults = {"channels": [32, 64], "fc": [classes]}
        defaults.update({k: fill * n if k == "pools" else [fill] * n
                         for k, fill in CONV_FILL.items()})
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def check_available(args: Namespace, typed: set[str]) -> None:
    """Models, todos and flags that later versions add end here, before anything is loaded."""
    if args.model in LATER_MODELS:
        raise UsageError(f"--model {args.model} is not available yet in this version; "
                         f"use one of {', '.join(MODELS)}")
    if args.todo in LATER_TODOS:
        raise UsageError(f"--todo {args.todo} is not available yet in this version; "
                         f"use one of {', '.join(sorted(TODOS))}")
    if "dropouts" in typed:
        raise UsageError("--dropouts is not available yet in this version; remove it")


def validate(args: Namespace, typed: set[str]) -> None:
    """Check the flags against each other; fill the per-layer defaults."""
    check_available(args, typed)
    one_of("model", args.model, MODELS)
    one_of("todo", args.todo, sorted(TODOS))
    one_of("task", args.task, TASKS)
    one_of("act", args.act, ACTIVATIONS)
    one_of("alg", args.alg, ALGS)
    one_of("loss", args.loss, LOSSES)
    one_of("optim", args.optim, OPTIMS)
    one_of("dynamics", args.dynamics, ("explicit", "autograd"))
    wrong_place = [(ATTACK_FLAGS, "--todo attack or advtrain"), (LCA_FLAGS, "--model LCACNN")]
    for group, needs in wrong_place:
        for dest in group:
            if dest in typed:
                raise UsageError(f"{flag(dest)} only applies with {needs}; remove it")
    is_cnn = MODELS[args.model] == "cnn"
    for dest in (CONV_FLAGS if not is_cnn else ("archi",)):
        if dest in typed:
            raise UsageError(f"{flag(dest)} does not apply to --model {args.model}; remove it")
    if args.alg != "EP" and args.todo == "train":  # evaluate and gducheck ignore --alg
        for dest in ("thirdphase", "random_sign"):
            if getattr(args, dest):
                raise UsageError(f"{flag(dest)} only applies with --alg EP (not {args.alg})")
    if args.softmax and args.loss != "cel":
        raise UsageError("--softmax needs --loss cel: the read-out is trained with cross-entropy")
    if args.todo == "evaluate" and not args.load_path:
        raise UsageError("--todo evaluate needs --load-path DIR (a results folder with model.pt)")
    check_vf_and_gdu(args, typed)
    check_steps(args)
    fill_defaults(args)
    n_layers = check_architecture(args)
    for dest, fill in (("lrs", 5e-4), ("wds", 0.0)):
        values = getattr(args, dest)
        if values is None:
            setattr(args, dest, [fill] * n_layers)
        elif len(values) != n_layers:
            raise UsageError(f"{flag(dest)} has {len(values)} entries but the model has "
                             f"{n_layers} layers of weights; give one per layer")


def is_vf(args: Namespace) -> bool:
    return args.model.startswith("VF")


def check_vf_and_gdu(args: Namespace, typed: set[str]) -> None:
    """Flags of the VF models and of the GDU check that only make sense together."""
    if args.same_update and not (is_vf(args) and (args.alg == "EP" or args.todo != "train")):
        raise UsageError("--same-update only applies to --model VFMLP or VFCNN with --alg EP; "
                         "remove it")
    if is_vf(args) and args.alg == "BP":
        raise UsageError(f"--alg BP: a feed-forward pass never uses the feedback weights of "
                         f"--model {args.model}; use --alg EP or BPTT")
    wrong_todo = args.todo != "train" and "check_thm" in typed  # a saved run's is ignored
    if args.check_thm and (wrong_todo or args.todo == "train" and args.alg != "EP"):
        raise UsageError("--check-thm checks EP while it trains: use it with --todo train "
                         "--alg EP, or run --todo gducheck")
    if (args.check_thm or args.todo == "gducheck") and args.betas[0] != 0:
        raise UsageError(f"--betas {args.betas[0]:g} {args.betas[1]:g}: the GDU check starts "
                         f"from the free fixed point; give --betas 0 {args.betas[1]:g}")


def check_steps(args: Namespace) -> None:
    for dest in ("T1", "mbs", "epochs"):
        if getattr(args, dest) < 1:
            raise UsageError(f"{flag(dest)} must be at least 1 (got {getattr(args, dest)})")
    if args.T2 < 0:
        raise UsageError(f"--T2 must be at least 0 (got {args.T2})")
    gdu = args.todo == "gducheck" or args.check_thm
    if (args.alg == "BPTT" or gdu) and args.T2 > args.T1:
        raise UsageError(f"--T2 {args.T2} > --T1 {args.T1}: BPTT back-propagates through the last "
                         "T2 of the T1 free steps; make T2 <= T1")
    if gdu and args.T2 < 1:
        raise UsageError("--T2 0: the GDU check compares the T2 nudged steps; give --T2 >= 1")
    if (args.alg == "EP" or args.todo == "gducheck") and args.betas[0] == args.betas[1]:
        raise UsageError("--betas: beta1 and beta2 must differ (EP divides by beta2 - beta1)")


def check_architecture(args: Namespace) -> int:
    """Layer sizes fit the task and each other; returns the number of weight layers."""
    (c, h, w), classes, _ = TASKS[args.task]
    if MODELS[args.model] == "mlp":
        if args.archi[0] != c * h * w:
            raise UsageError(f"--archi starts with {args.archi[0]} but --task {args.task} inputs "
                             f"have {c * h * w} pixels; start it with {c * h * w}")
        if len(args.archi) < 2:
            raise UsageError("--archi needs at least an input and an output size")
        last = args.archi[-1]
        n_layers = len(args.archi) - 1
        last_flag = "--archi"
    else:
        n = len(args.channels)
        for dest in CONV_LISTS:
            if len(getattr(args, dest)) != n:
                raise UsageError(f"{flag(dest)} has {len(getattr(args, dest))} entries but "
                                 f"--channels has {n}; give one per conv layer")
        for letter in args.pools:
            one_of("pools", letter, POOLS)
        size = h
        for k, (kern, st, pad, pool) in enumerate(zip(args.kernels, args.strides, args.paddings,
                                                      args.pools)):
            size = conv_output_size(size, kern, st, pad, pool)
            if size < 1:
                raise UsageError(f"conv layer {k + 1} shrinks the {h}x{w} input below 1 pixel; "
                                 "use smaller --kernels/--strides, more --paddings or fewer "
                                 "pools in --pools")
        last = args.fc[-1]
        n_layers = n + len(args.fc)
        last_flag = "--fc"
    if last != classes:
        raise UsageError(f"{last_flag} ends with {last} but --task {args.task} has {classes} "
                         f"classes; end it with {classes}")
    if args.softmax and n_layers < 2:
        raise UsageError("--softmax needs a hidden layer before the read-out")
    return n_layers


def build_model(args: Namespace) -> EnergyNet:
    shape = TASKS[args.task][0]
    if MODELS[args.model] == "mlp":
        model = build_mlp(args.archi, args.act, args.loss, args.softmax, is_vf(args))
    else:
        model = build_cnn(shape, args.channels, args.kernels, args.strides, args.paddings,
                          args.pools, args.fc, args.act, args.loss, args.softmax, is_vf(args))
    if args.scale is not None:
        scale_init(model, args.scale)
    return model


def hyperparameters_text(args: Namespace, argv: list[str], model_text: str) -> str:
    lines = [f"python main.py {shlex.join(argv)}", ""]
    lines += [f"{k}: {v}" for k, v in sorted(vars(args).items())]
    return "\n".join(lines + ["", model_text, ""])
