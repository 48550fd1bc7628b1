"""Results folders written by the published EP code, read as ours.

Its checkpoint.tar holds `model_state_dict`, `opt`, `scheduler`, `epoch` and accuracy lists
(`train_acc`, `test_acc`: percentages after a placeholder for epoch 0), and no arguments: the
command line gives the architecture. Its weights are `synapses.k.{weight,bias}` as ours, and a
VF model's feedback weights are `B_syn.j.weight`, the B of synapse j+1; a VFMLP stores B as a
layer from the upper to the lower layer (transposed). Its optimizer has one parameter group
per synapse and then one per B, in that order; ours puts B in its synapse's group.
"""

from __future__ import annotations

from errors import UsageError

KINDS = ("weight", "bias", "feedback")  # our order of a synapse's parameters


def our_name(key: str, where: str) -> tuple[str, bool]:
    """The published weight name as ours, and whether that weight is a feedback B."""
    part, index, kind = (key.split(".") + ["", "", ""])[:3]
    if part not in ("synapses", "B_syn") or not index.isdigit() or kind not in KINDS[:2]:
        raise UsageError(f"{where}: unknown weight {key!r} in model_state_dict; it was not "
                         "written by the published EP code")
    if part == "B_syn":
        return f"synapses.{int(index) + 1}.feedback", True
    return key, False


def sort_key(name: str) -> tuple[int, int]:
    _, index, kind = name.split(".")
    return int(index), KINDS.index(kind)


def published_checkpoint(ckpt: dict, model_name: str, where: str) -> dict:
    """A published checkpoint.tar in our checkpoint's layout (no arguments, no data generator
    state, no position inside an epoch)."""
    state = ckpt["model_state_dict"]
    if not isinstance(state, dict):
        raise UsageError(f"{where}: model_state_dict is not a dict of weights")
    epoch = ckpt.get("epoch")
    if not isinstance(epoch, int) or epoch < 0:
        raise UsageError(f"{where}: its epoch ({epoch!r}) is damaged; use another run folder")
    transposed = model_name == "VFMLP"
    names, weights = [], {}  # names in the published parameter (and optimizer) order
    for key, value in state.items():
        name, is_feedback = our_name(key, where)
        names.append(name)
        weights[name] = value.t() if is_feedback and transposed else value
    history = {"epoch": list(range(1, epoch + 1))}
    for key in ("train_acc", "test_acc"):
        values = ckpt.get(key)
        values = list(values)[len(values) - epoch:] if isinstance(values, list) else []
        history[key] = values if len(values) == epoch else [None] * epoch
    history["train_loss"], history["seconds"] = [None] * epoch, [None] * epoch
    try:
        optimizer = optimizer_state(ckpt.get("opt"), names, transposed)
        scheduler = scheduler_state(ckpt.get("scheduler"), names)
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise UsageError(f"{where}: its optimizer or scheduler state is damaged ({e!r}); use "
                         "another run folder") from None
    return {"model": weights, "args": None, "epoch": epoch, "history": history,
            "best_acc": max((a for a in history["test_acc"] if a is not None), default=-1.0),
            "optimizer": optimizer, "scheduler": scheduler, "gen": None, "cursor": None,
            "published": True}


def optimizer_state(saved: dict | None, names: list[str], transposed: bool) -> dict | None:
    """The published optimizer state in our groups (one per synapse, B inside); a VFMLP's B
    buffers are transposed like B itself."""
    if saved is None:
        return None
    ours = sorted(names, key=sort_key)
    state = {}
    for i, name in enumerate(names):
        buffers = saved["state"].get(i)
        if buffers is not None:
            turn = transposed and name.endswith("feedback")
            state[ours.index(name)] = {k: v.t() if turn and v.dim() == 2 else v
                                       for k, v in buffers.items()}
    synapses = sorted({sort_key(name)[0] for name in names})
    groups = [{**{k: v for k, v in group.items() if k != "params"},
               "params": [i for i, name in enumerate(ours) if sort_key(name)[0] == k]}
              for k, group in zip(synapses, saved["param_groups"])]
    return {"state": state, "param_groups": groups}


def scheduler_state(saved: dict | None, names: list[str]) -> dict | None:
    """The published scheduler has an lr per group, B's groups last: keep the synapses'."""
    if saved is None:
        return None
    n = len({sort_key(name)[0] for name in names})
    return {k: v[:n] if isinstance(v, list) else v for k, v in saved.items()}
