"""``daonet audit-methods``: the privacy-accuracy frontier of every defence, each audited from scratch.

``daonet audit-methods --dataset mnist --model mlp --out reports/methods-mnist --threads 1`` trains, exports and
audits one model per method (plain dropping, wider first layer + higher p, quantization, NoPeek,
adversarial training, the device certificate policy, compositions), all cached in ``--out``, and writes
``methods.json``, ``methods.md`` and ``frontier.png``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from .common import console, fail, parse_kwargs

EPOCHS_DEFAULTS = {"mnist-mlp": 5, "ecg5000-cnn1d": 40}


def audit_methods(
    dataset: Annotated[str, typer.Option(help="mnist, fashion-mnist, ecg5000, digits, ...")] = "mnist",
    model: Annotated[str, typer.Option(help="mlp, cnn or cnn1d")] = "mlp",
    out: Annotated[Path, typer.Option(help="cache + methods.{json,md} + frontier.png")] = Path("reports/methods"),
    only: Annotated[str, typer.Option(help="comma-separated method names (see --list; "
                                                   "default: the grid measured for the task)")] = "",
    add: Annotated[list[str] | None, typer.Option(help="extra method NAME:p=0.97,hidden=4096,q=1,adv=0.5,"
                                                       "nopeek=0.3,rho=0.1 (repeatable)")] = None,
    list_methods: Annotated[bool, typer.Option("--list", help="print the method grid and exit")] = False,
    epochs: Annotated[int | None, typer.Option(min=1, help="training epochs (default: 5 mnist, 40 ecg5000)")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="training batch size")] = None,
    model_opt: Annotated[list[str] | None, typer.Option(help="base architecture option KEY=VALUE (repeatable)")]
    = None,
    n_test: Annotated[int | None, typer.Option(min=2, help="audited test requests (default: the budget's)")] = None,
    public_size: Annotated[int | None, typer.Option(min=0, help="attacker's public examples (0 = all; default: "
                                                                "the budget's)")] = None,
    decoder_epochs: Annotated[int | None, typer.Option(min=1, help="hard cap on decoder epochs")] = None,
    rmle_steps: Annotated[int | None, typer.Option(min=10, help="regularized-inversion steps")] = None,
    n_repeat: Annotated[int | None, typer.Option(min=1, help="inputs for the repeated-query attack")] = None,
    budget_curve: Annotated[bool, typer.Option(help="also retrain the strongest decoder on smaller public sets")]
    = False,
    policy_eval: Annotated[int, typer.Option(min=10, help="test inputs for a policy's accuracy cost")] = 2000,
    budget: Annotated[str, typer.Option(help="attacker budget of every audit: full (converged; privacy claims) or "
                                             "quick (NOT a privacy claim)")] = "full",
    torch_device: Annotated[str, typer.Option(help="where attackers train: auto, cpu, cuda")] = "auto",
    seed: int = 0,
    threads: Annotated[int | None, typer.Option(min=1, help="torch CPU threads (1 on a shared machine)")] = None,
    reuse: Annotated[bool, typer.Option(help="reuse cached runs/audits with identical settings")] = True,
    data_root: Annotated[Path | None, typer.Option(help="local folder with the data set's files")] = None,
) -> None:
    """Train, export and fully audit one model per defence method; draw them on one frontier plot."""
    from dataclasses import replace

    import torch

    from ..audit import AuditConfig
    from ..audit.frontier import default_train_config
    from ..errors import InputError
    from ..studies.frontier_methods import all_methods, default_methods, parse_method, run_methods

    methods = default_methods(dataset, model)
    if only:
        wanted = [t for t in re.split(r"[,\s]+", only.strip()) if t]
        known = {m.name: m for m in all_methods(model)}
        bad = [w for w in wanted if w not in known]
        if bad:
            fail(f"unknown method(s) {', '.join(bad)}; known: {', '.join(known)}")
        methods = [known[w] for w in wanted]
    try:
        methods += [parse_method(s) for s in add or []]
    except InputError as exc:
        fail(str(exc))
    if list_methods:
        for m in methods:
            console.print(f"{m.name:24s} {m.family:10s} {m.describe()}")
        return
    if threads:
        torch.set_num_threads(threads)
    cfg = AuditConfig(dataset=dataset, budget=budget, n_test=n_test, public_size=public_size,
                      decoder_epochs=decoder_epochs, rmle_steps=rmle_steps, n_repeat=n_repeat, seed=seed,
                      budget_curve=budget_curve, torch_device=torch_device,
                      data_root=str(data_root) if data_root else None)
    try:
        cfg.validate()
    except InputError as exc:
        fail(str(exc))
    tcfg = default_train_config(dataset, model)
    tcfg = replace(tcfg, seed=seed, data_root=cfg.data_root, model_kwargs={**tcfg.model_kwargs,
                                                                           **parse_kwargs(model_opt)},
                   epochs=epochs or EPOCHS_DEFAULTS.get(f"{dataset}-{model}", tcfg.epochs),
                   batch_size=batch_size or tcfg.batch_size)
    rows = run_methods(dataset, model, methods, out, cfg, train_cfg=tcfg, reuse=reuse, policy_eval=policy_eval,
                       log=lambda s: console.print(s))
    console.print((out / "methods.md").read_text())
    console.print(f"[green]written[/] {out / 'frontier.png'}, {out / 'methods.json'} ({len(rows)} methods)")
