"""Your own ``torch.nn.Module`` as the architecture of a plan: every candidate is the user's model put through
:func:`daonet.split`, trained, exported with :func:`daonet.export` and audited, as a row of the study pipeline.

What a plan may vary for a user's model is what ``daonet.split`` and the training loop can change: the drop
rate, quantization and noise on the transmitted values (split's defences), NoPeek and min-max training (loss
terms of the loop here) and the device policy (an export option). ``daonet.split`` moves the model's *first*
layer (+ ReLU) onto the device and nothing more, so device blocks (``device_layers`` >= 2, ``block_width``)
exist for the zoo architectures only and are refused here.

Honesty of the comparison: every candidate starts from the same initial weights (a deep copy of the module as
given, or the factory called afresh under the plan's seed), never from another candidate's trained weights.
Those weights, the architecture (its ``repr`` and the source of the user's module classes) and the user's data
are hashed into the row's content address, so two different models (or data sets) never share a row.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import marshal
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..convert import SplitError, export, first_layer, save_program, server_part, split
from ..data import Dataset, load_dataset
from ..errors import DaonetError, InputError
from ..nn import LocalizedFirstLayer, SplitModel
from ..nn.defences import sent_concentration
from ..train import Defences, evaluate
from .pipeline import Row, RowData, RowResult, run_row

if TYPE_CHECKING:
    from ..train_config import TrainConfig

__all__ = ["OwnModel", "own_model", "module_fingerprint", "run_own_row"]

ModelSource = nn.Module | Callable[[], nn.Module]
BLOCK_REFUSED = ("daonet.split moves only your model's first layer (+ ReLU) onto the device, so device blocks "
                 "(device_layers >= 2, block_width, device_pool) exist for the zoo architectures only (daonet plan "
                 "--model mlp|cnn|cnn1d); leave device_layers, block_width and device_pool out of the grid (or give "
                 "device_layers=1)")


@dataclass(frozen=True)
class OwnModel:
    """A checked user model: where each candidate's initial weights come from, and what names it."""

    source: ModelSource  # a snapshot of the module as given (deep-copied), or the user's factory
    fingerprint: str  # architecture + initial weights
    name: str  # the module's class name (model ids, messages)
    example_input: np.ndarray  # a few training inputs, for daonet.split
    dataset: Dataset | None  # the user's arrays; None: PlanConfig.dataset names a data set
    data_fingerprint: str | None
    seed: int

    def fresh(self) -> nn.Module:
        """A new module with the initial weights (never a trained candidate's)."""
        if isinstance(self.source, nn.Module):
            return copy.deepcopy(self.source)
        model = _call_factory(self.source, self.seed)
        if module_fingerprint(model) != self.fingerprint:
            raise InputError("the model factory returned different initial weights (or another architecture) "
                             "for the same seed; make it deterministic under torch.manual_seed, or pass the "
                             "module itself")
        return model


def _call_factory(factory: Callable[[], nn.Module], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    try:
        model = factory()
    except Exception as exc:  # the user's code: say where it failed
        raise InputError(f"the model factory failed ({type(exc).__name__}: {exc}); daonet.plan calls it with no "
                         "arguments for every candidate") from exc
    if not isinstance(model, nn.Module):
        raise InputError(f"the model factory returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _class_code(cls: type) -> bytes:
    try:
        return inspect.getsource(cls).encode()
    except (OSError, TypeError):  # defined in a notebook or exec'd: the forward's bytecode is what we have
        code = getattr(getattr(cls, "forward", None), "__code__", None)
        return marshal.dumps(code) if code is not None else b""


def module_fingerprint(model: nn.Module) -> str:
    """What names a user's model in a row's content address: its ``repr``, the source of its own (non-torch)
    module classes (``forward`` is code, not in the repr) and every tensor of its state dict, bytes included."""
    h = hashlib.sha256(repr(model).encode())
    for cls in sorted({type(m) for m in model.modules()}, key=lambda c: f"{c.__module__}.{c.__qualname__}"):
        h.update(f"{cls.__module__}.{cls.__qualname__}".encode())
        if not cls.__module__.startswith("torch."):
            h.update(_class_code(cls))
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def data_fingerprint(ds: Dataset) -> str:
    h = hashlib.sha256(json.dumps([ds.name, ds.kind, list(ds.classes)]).encode())
    for a in (ds.x_train, ds.y_train, ds.x_test, ds.y_test):
        h.update(f"{a.dtype}:{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def own_model(model: Any, dataset: str | Dataset, *, seed: int = 0, data_root: str | None = None,
              example_input: Any = None) -> OwnModel:
    """Check a user's model against the data before anything trains; every refusal says what to change.

    The model must be a ``torch.nn.Module`` (or a zero-argument function returning one) that ``daonet.split``
    accepts, that runs on the data set's inputs and returns one logit per class, and whose part after the first
    layer ``torch.export`` can trace (the server bundle is such a program)."""
    if isinstance(model, nn.Module):
        source: ModelSource = copy.deepcopy(model)  # the weights as given now; later changes do not leak in
        instance = copy.deepcopy(model)
    elif callable(model):
        source, instance = model, _call_factory(model, seed)
        if module_fingerprint(_call_factory(model, seed)) != module_fingerprint(instance):
            raise InputError("the model factory returns different initial weights on each call under the same "
                             "seed; candidates must start alike: seed it with torch.manual_seed, or pass the "
                             "module itself")
    else:
        raise InputError(f"daonet.plan takes a torch.nn.Module (or a function returning a fresh one), got "
                         f"{type(model).__name__}")
    split_already = [n or "root" for n, m in instance.named_modules() if isinstance(m, LocalizedFirstLayer)]
    if split_already:
        raise InputError(f"the model is already split (its {split_already[0]} is a LocalizedFirstLayer); pass the "
                         "model before daonet.split: every candidate is split with its own drop rate")
    ds: Dataset
    if isinstance(dataset, Dataset):
        ds, given = dataset, dataset
    elif isinstance(dataset, str):
        ds, given = load_dataset(dataset, data_root), None
    else:
        raise InputError(f"dataset must be a data set name or spec (digits, mnist, npz:PATH, csv:DIR, ...) or a "
                         f"daonet.data.Dataset (Dataset.from_arrays(x_train, y_train, x_test, y_test)), got "
                         f"{type(dataset).__name__}")
    x = _example(example_input, ds)
    fingerprint = module_fingerprint(instance)
    trial = copy.deepcopy(instance)
    try:
        split(trial, 0.5, x)
    except SplitError as exc:
        raise InputError(f"daonet.plan cannot split your model: {exc}") from exc
    trial.eval()
    with torch.no_grad():
        out = trial(torch.from_numpy(x))
    if out.dim() != 2 or out.shape[1] != ds.n_classes:
        raise InputError(f"the model returns outputs shaped {tuple(out.shape)} on {len(x)} inputs, but the data set "
                         f"has {ds.n_classes} classes; it must return logits ({len(x)}, {ds.n_classes})")
    first = first_layer(trial)
    with tempfile.TemporaryDirectory() as tmp:  # fail now, not after the first candidate has trained
        try:
            save_program(server_part(trial), first.output_shape, Path(tmp) / "server.pt2")
        except SplitError as exc:
            raise InputError(str(exc)) from exc
    return OwnModel(source, fingerprint, type(instance).__name__, x, given,
                    data_fingerprint(given) if given is not None else None, seed)


def _example(example_input: Any, ds: Dataset) -> np.ndarray:
    if example_input is None:
        return np.ascontiguousarray(ds.x_train[:8], dtype=np.float32)
    x = np.asarray(example_input.detach().cpu() if isinstance(example_input, torch.Tensor) else example_input)
    if x.ndim < 2 or tuple(x.shape[1:]) != tuple(ds.input_shape) or len(x) < 1:
        raise InputError(f"example_input is shaped {tuple(x.shape)}, but the data set's inputs are "
                         f"{tuple(ds.input_shape)}: pass a batch (N, {', '.join(map(str, ds.input_shape))}) of its "
                         "training inputs, or leave example_input out (the first 8 training inputs are used)")
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    return np.ascontiguousarray(x, dtype=np.float32)


def _split_copy(own: OwnModel, tc: TrainConfig) -> nn.Module:
    defences = {k: getattr(tc, k) for k in ("quantize_levels", "noise_std") if getattr(tc, k)}
    return split(own.fresh(), tc.drop_rate, own.example_input, **defences)


def _train(tc: TrainConfig, own: OwnModel, ds: Dataset, run_dir: Path) -> None:
    """The training loop of ``daonet train`` (AdamW, one-cycle schedule, dropping on; NoPeek and min-max training
    as loss terms) on the user's split model; writes ``model.pt``, ``config.json`` and ``metrics.json``."""
    torch.manual_seed(tc.seed)
    np.random.seed(tc.seed)
    model = _split_copy(own, tc)
    first = first_layer(model)
    gen = torch.Generator().manual_seed(tc.seed)
    first.generator = gen
    sent: dict[str, torch.Tensor] = {}
    hook = first.register_forward_hook(lambda _m, _i, out: sent.__setitem__("h", out))
    x, y = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)
    steps = (len(x) + tc.batch_size - 1) // tc.batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tc.lr, total_steps=tc.epochs * steps)
    defences = Defences.for_training(tc, first, ds)
    t0 = time.perf_counter()
    try:
        def forward(xb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = model(xb)
            return sent["h"], logits

        for epoch in range(tc.epochs):
            model.train()
            defences.start_epoch(epoch, model, forward, x, gen)
            perm = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x), tc.batch_size):
                idx = perm[i:i + tc.batch_size]
                if len(idx) < 2:  # BatchNorm needs two samples
                    continue
                xb = x[idx]
                logits = model(xb)
                loss = defences.loss(nn.functional.cross_entropy(logits, y[idx]), xb, sent["h"], logits, y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    finally:
        hook.remove()
        first.generator = None
    train_time = time.perf_counter() - t0
    model.eval()
    first.calibrate_noise(x)  # the absolute noise scale from the (public) training data, as daonet train does
    ev = evaluate(SplitModel(first, server_part(model), {}), ds.x_test, ds.y_test, draws=tc.eval_draws,
                  seed=tc.seed + 1)
    metrics: dict[str, Any] = {
        "dataset": ds.name, "model": tc.model, "drop_rate": tc.drop_rate,
        "test_accuracy": {"mean": ev["accuracy_mean"], "std": ev["accuracy_std"], "draws": ev["accuracy_draws"],
                          "dropping": tc.drop_rate > 0},
        "surviving_outputs": ev["surviving_outputs"], "n_outputs": ev["n_outputs"],
        "n_train": int(len(ds.x_train)), "n_test": int(len(ds.x_test)), "train_time_s": round(train_time, 3),
        "epochs": tc.epochs, "torch_threads": torch.get_num_threads(), "device_layers": 1,
        "extra": {"own_model": own.name, "fingerprint": own.fingerprint},
        "sent_values": sent_concentration(first, ds.x_test, seed=tc.seed + 3),
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), run_dir / "model.pt")
    (run_dir / "config.json").write_text(json.dumps({"train": asdict(tc), "own_model": {
        "name": own.name, "fingerprint": own.fingerprint, "data": own.data_fingerprint}}, indent=2) + "\n")
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


def _export(row: Row, own: OwnModel, ds: Dataset, run_dir: Path, bundle: Path) -> None:
    """The trained candidate (rebuilt: the initial module, split alike, the trained weights) through
    :func:`daonet.export`; the training inputs are the public data (the certificate's mean, the noise scale)."""
    model = _split_copy(own, row.train)
    try:
        model.load_state_dict(torch.load(run_dir / "model.pt", weights_only=True))
    except (RuntimeError, OSError) as exc:
        raise DaonetError(f"cannot load {run_dir / 'model.pt'} ({exc}); delete {run_dir.parent} to retrain the "
                          "candidate") from exc
    model.eval()
    export(model, bundle, classes=ds.classes, model_id=row.export.model_id, public_data=ds.x_train,
           value_dtype=row.export.value_dtype, max_revealed_energy=row.export.max_revealed_energy,
           input_spec={"raw_dtype": str(ds.info.get("raw_dtype", "float32"))})


def run_own_row(row: Row, own: OwnModel, root: str | Path, log: Callable[[str], None] | None = None) -> RowResult:
    """:func:`daonet.studies.pipeline.run_row` for a user's model: the same folder per content address
    (``root/<key>``), the same lock, each stage reused when there, the same audit stage; training and export
    go through ``daonet.split`` and ``daonet.export`` instead of the zoo."""

    def train_stage(row: Row, run_dir: Path, data: RowData) -> None:
        _train(row.train, own, data.audited(), run_dir)

    def export_stage(row: Row, run_dir: Path, bundle: Path, data: RowData) -> None:
        _export(row, own, data.audited(), run_dir, bundle)

    return run_row(row, root, dataset=own.dataset, log=log, train_stage=train_stage, export_stage=export_stage)
