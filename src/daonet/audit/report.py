"""The self-contained HTML report of one audit (figures embedded as base64 PNG)."""

from __future__ import annotations

import base64
import html
import io
import json
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..audit_report import AuditReport  # noqa: E402

ORDER = ("data_mean", "class_prior", "decoder_label", "decoder_prediction", "min_norm", "rmle", "rmle_prior",
         "rmle_naive", "decoder_mlp", "decoder_conv", "decoder_adaptive", "decoder")
SHORT = {"data_mean": "data mean", "class_prior": "class prior", "min_norm": "min-norm LS", "rmle": "rMLE",
         "rmle_prior": "rMLE from prior", "rmle_naive": "rMLE naive", "decoder": "inverse net",
         "decoder_mlp": "MLP decoder", "decoder_conv": "conv decoder", "decoder_adaptive": "adaptive decoder",
         "decoder_prediction": "prediction-only decoder", "decoder_label": "label-only decoder"}
COLORS = {"min_norm": "tab:blue", "rmle": "tab:green", "rmle_prior": "tab:cyan", "rmle_naive": "tab:olive",
          "decoder": "tab:red", "decoder_mlp": "tab:red", "decoder_conv": "tab:orange",
          "decoder_adaptive": "tab:purple",
          "decoder_prediction": "tab:brown", "decoder_label": "tab:pink", "class_prior": "0.35", "data_mean": "0.6"}
CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1150px;margin:24px auto;color:#222;
padding:0 16px;line-height:1.45}
h1{font-size:1.5em;margin-bottom:4px}h2{font-size:1.2em;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0;font-size:.92em}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}.note{color:#555;font-size:.9em}
img{max-width:100%}.good{color:#1a7f37}.bad{color:#b42318}pre{background:#f6f6f6;padding:8px;font-size:.8em;
overflow-x:auto}
"""


def _png(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="figure" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _esc(v: Any) -> str:
    return html.escape(str(v))


def _fmt(v: Any, digits: int = 3, signed: bool = False) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float | np.floating):
        return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"
    return _esc(v)


def _table(head: list[str], rows: list[list[Any]]) -> str:
    th = "".join(f"<th>{_esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c if isinstance(c, str) else _fmt(c)}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _received_image(h: np.ndarray) -> np.ndarray:
    """The dropped activation vector laid out row by row on a near-square grid (NaN padding)."""
    m = h.size
    w = int(np.ceil(np.sqrt(m)))
    grid = np.full(w * int(np.ceil(m / w)), np.nan)
    grid[:m] = h
    return grid.reshape(-1, w)


def example_grid(ex: dict[str, Any], title: str = "") -> str:
    """Original, what the server received, and each reconstruction, for a few audited requests."""
    names = [n for n in ORDER if n in ex["recs"] and n != "data_mean"]
    x, h = ex["x"], ex["h"]
    rows = len(x)
    if ex["kind"] == "image" and x.ndim == 4:
        cols = 2 + len(names)
        fig, axes = plt.subplots(rows, cols, figsize=(1.35 * cols, 1.4 * rows), squeeze=False)
        for i in range(rows):
            img = x[i].transpose(1, 2, 0) if x.shape[1] == 3 else x[i, 0]
            panels = [("original", img, "gray"), (f"received: {int((h[i] > 0).sum())}/{h[i].size}",
                                                  _received_image(h[i]), "magma")]
            for n in names:
                r = ex["recs"][n][i]
                panels.append((SHORT[n], np.clip(r.transpose(1, 2, 0) if x.shape[1] == 3 else r[0], 0, 1), "gray"))
            for j, (lab, im, cmap) in enumerate(panels):
                ax = axes[i, j]
                ax.imshow(im, cmap=cmap, vmin=0 if cmap == "gray" else None, vmax=1 if cmap == "gray" else None,
                          interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0 or j == 1:
                    ax.set_title(lab, fontsize=7)
    else:
        cols = 1 + len(names)
        fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 1.6 * rows), squeeze=False)
        fig.subplots_adjust(hspace=0.55, wspace=0.25)
        for i in range(rows):
            sig = x[i].reshape(-1)
            ax = axes[i, 0]
            kept = np.flatnonzero(h[i])  # one line collection, not a stem per output (thousands on long signals)
            ax.vlines(kept, 0, h[i][kept], lw=0.6)
            ax.plot(kept, h[i][kept], ".", ms=2)
            ax.set_title(f"received: {int((h[i] > 0).sum())}/{h[i].size}", fontsize=7)
            for j, n in enumerate(names, start=1):
                ax = axes[i, j]
                r = ex["recs"][n][i].reshape(-1)
                ax.plot(sig, color="k", lw=1)
                ax.plot(r, color=COLORS.get(n, "tab:purple"), lw=1)
                c = np.corrcoef(sig, r)[0, 1] if r.std() > 1e-12 else 0.0
                ax.set_title(f"{SHORT[n]} r={c:.2f}", fontsize=7)
            for ax in axes[i]:  # no ticks: the traces are compared by shape (and r), and tick labels on every
                ax.set_xticks([])  # panel cost most of the rendering time on long signals
                ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    return _png(fig)


def certificate_figure(cert: dict[str, np.ndarray], n: int) -> str:
    fig, axes = plt.subplots(1, 4, figsize=(13, 2.6))
    specs = [("k", "surviving outputs k", None), ("rank", "rank / n", n), ("revealed_energy", "revealed energy ρ(x)",
                                                                           None),
             ("max_leverage", "max_j P_jj", None)]
    for ax, (key, label, div) in zip(axes, specs, strict=True):
        v = np.asarray(cert[key], float) / (div or 1)
        lo, hi = float(v.min()), float(v.max())
        if hi - lo < 1e-6 * max(1.0, abs(hi)):  # constant (e.g. every request fully revealed): one bar
            lo, hi = lo - 0.5 * max(1e-3, abs(lo) * 0.01), hi + 0.5 * max(1e-3, abs(hi) * 0.01)
        ax.hist(v, bins=30, range=(lo, hi), color="tab:blue", alpha=.8)
        ax.set_xlabel(label)
        ax.axvline(v.mean(), color="k", ls="--", lw=1)
    axes[0].set_ylabel("requests")
    fig.tight_layout()
    return _png(fig)


def render_audit_html(rep: AuditReport, ex: dict[str, Any] | None = None) -> str:
    """One audit as a self-contained page: the verdict first, then every attack, the budget, the certificate."""
    metric = rep.metric
    other = "psnr" if metric == "ssim" else "nmse"
    b = rep.bundle
    parts = [f"<h1>daonet privacy audit — {_esc(b.model_id)} on {_esc(rep.dataset)}</h1>",
             f"<p class=note>bundle {_esc(b.path)}, version {_esc(b.version)}; first layer {_esc(b.kind)} "
             f"{_esc(list(b.input_shape))} → {b.n_outputs} outputs, drop rate p = {b.drop_rate}; "
             f"device policy: {_esc(rep.policy or 'none (plain dropping)')}</p>"]
    if not rep.budget.claim:
        parts.append(f"<p class=bad><b>NOT A PRIVACY CLAIM</b>: {_esc(rep.budget.note)}</p>")
    for w in rep.warnings:
        if rep.budget.claim or w != rep.budget.note:
            parts.append(f"<p class=bad>warning: {_esc(w)}</p>")
    parts.append(_verdict(rep))
    parts.append("<h2>Attacks</h2>")
    rows = []
    for name in [n for n in ORDER if n in rep.attacks] + [n for n in rep.attacks if n not in ORDER]:
        mm = rep.attacks[name].metrics
        a, se = mm[metric].advantage, mm[metric].advantage_se
        rows.append([rep.attacks[name].label, f"{mm[metric].mean:.3f} ± {mm[metric].std:.3f}",
                     f"{mm[other].mean:.3f}" if other in mm else "–",
                     "–" if a is None else f"{a:+.3f}" + ("" if se is None else f" ± {se:.3f}")])
    parts.append(_table(["attack", f"{metric} (mean ± sd)", other, f"advantage over class prior ({metric})"], rows))
    for name, why in rep.skipped_attacks.items():
        parts.append(f"<p class=note>{_esc(name)} not run: {_esc(why)}</p>")
    parts += _budget_section(rep)
    parts.append(f"<p class=note>{_esc(rep.split)}; public examples: {rep.n_public}. Advantage: paired mean "
                 "difference over the same requests ± its standard error.</p>")
    if ex:
        parts.append("<h2>Examples</h2>")
        parts.append(example_grid(ex))
    parts += _certificate_section(rep, ex)
    parts += _repeated_section(rep)
    if rep.policy_cost:
        parts.append("<h2>Cost of the device policy</h2>")
        key = f"min_norm_{metric}"
        rows = [[_fmt(p["max_revealed_energy"]), p["accuracy"], p["surviving"], p["dropped_by_policy"],
                 p["revealed_energy"], p[key], _fmt(p["policy_ok_all"])] for p in rep.policy_cost]
        parts.append(_table(["max ρ", "accuracy", "surviving", "dropped by policy", "mean ρ", f"min-norm {metric}",
                             "policy held on all"], rows))
    parts.append("<h2>Attack budgets</h2>")
    for name, bud in rep.budgets.items():
        parts.append(f"<p><b>{_esc(SHORT.get(name, name))}</b>: {_esc(_budget_line(name, bud.to_json()))}</p>")
    parts.append("<h2>Configuration and timing</h2><pre>" + _esc(json.dumps(
        {"config": rep.config, "timing_s": rep.timing_s, "torch_threads": rep.torch_threads}, indent=1)) + "</pre>")
    return _page(f"daonet audit {b.model_id}", parts)


def _verdict(rep: AuditReport) -> str:
    metric, best, adv = rep.metric, rep.best_attack, rep.best_advantage
    verdict = ""
    if best and rep.best is not None:
        cls = "bad" if adv is not None and adv > 0.05 else "good"
        verdict = (f"The strongest attack is <b>{_esc(SHORT.get(best, best))}</b> with mean {metric.upper()} "
                   f"<b>{rep.best:.3f}</b>, against <b>{rep.class_prior:.3f}</b> for the class-conditional mean of "
                   f"the predicted class: an advantage of <b class={cls}>{_fmt(adv, signed=True)}</b>.")
        if rep.prediction_only is not None:
            verdict += (f" A decoder that sees only the server's class probabilities reaches "
                        f"{rep.prediction_only:.3f}: the activations leak <b>{rep.best - rep.prediction_only:+.3f}"
                        "</b> beyond what the prediction itself reveals.")
        if rep.label_only is not None and rep.leakage is not None:
            bound = "at least " if rep.is_lower_bound else ""
            verdict = (f"<b>Leakage beyond the label: <span class=bad>{bound}{rep.leakage.mean:+.3f} ± "
                       f"{rep.leakage.se:.3f}</span> {metric.upper()}</b> (the best attack minus a label-only "
                       f"decoder, {rep.label_only:.3f}, which sees only the predicted class: what the server must "
                       "learn for the task). " + verdict)
    s = rep.surviving
    return (f"<p>Accuracy on the {rep.n_test} audited test requests (server predictions from the payload bytes): "
            f"<b>{rep.accuracy:.4f}</b>. Surviving outputs per request: mean {s.mean:.1f} (min {s.min:.0f}, max "
            f"{s.max:.0f}) of {rep.bundle.n_outputs}. {verdict}</p>")


def _budget_section(rep: AuditReport) -> list[str]:
    metric, cv = rep.metric, rep.budget_curve
    if cv is not None:
        g = cv.last_doubling_gain
        return ["<h2>Attacker budget: has the attack saturated?</h2>", budget_figure(cv.to_json(), metric),
                f"<p class=note>Left: held-out {metric} per training epoch of each decoder family (early stopping on "
                f"a validation split of the public data). Right: decoder_{_esc(cv.family)} retrained from scratch on "
                f"smaller public sets, scored on the audited test requests. Last step of public data "
                f"({' → '.join(str(p.public_train) for p in cv.points[-2:])}): {_fmt(g, signed=True)} {metric} "
                f"({'saturated' if g is not None and g <= 0.01 else 'NOT saturated: a lower bound'}).</p>"]
    epochs = {k.removeprefix("decoder_"): list(b.val_metric_per_epoch) for k, b in rep.budgets.items()
              if k.startswith("decoder_") and b.val_metric_per_epoch}
    if not epochs:
        return []
    return ["<h2>Attacker budget: decoders vs training epochs</h2>",
            budget_figure({"epochs": epochs, "points": []}, metric),
            "<p class=note>Held-out score per training epoch of each decoder family. The public-data half of the "
            "budget curve was not run (<code>--no-budget-curve</code>): whether more public data would leak more "
            "is unchecked.</p>"]


def _certificate_section(rep: AuditReport, ex: dict[str, Any] | None) -> list[str]:
    c = rep.certificate
    parts = ["<h2>Per-request certificate (what the equations alone reveal)</h2>"]
    if "k" not in c:
        return [*parts, f"<p>{_esc(c.get('note'))}</p>"]
    crow = [[k, c[k]["mean"], c[k]["p5"], c[k]["median"], c[k]["p95"], c[k]["max"]]
            for k in ("k", "rank", "rank_fraction", "identifiable", "revealed_energy", "revealed_energy_public_mu",
                      "max_leverage", "worst_patch_revealed_energy", "worst_patch_rank_fraction",
                      "dropped_by_policy") if k in c]
    parts.append(_table(["quantity", "mean", "p5", "median", "p95", "max"], crow))
    parts.append(f"<p class=note>Requests with at least one identifiable input coordinate: "
                 f"{c['requests_with_identifiable']} of {rep.n_test}. revealed_energy is ρ(x) as the device "
                 f"computes it, with its μ = {_esc(c.get('device_mu'))}; revealed_energy_public_mu uses the "
                 "attacker's per-coordinate mean of the public split.</p>")
    if ex and ex.get("cert") and len(ex["cert"].get("k", [])):
        parts.append(certificate_figure(ex["cert"], int(np.prod(rep.bundle.input_shape))))
    return parts


def _repeated_section(rep: AuditReport) -> list[str]:
    r, metric = rep.repeated, rep.metric
    if not r:
        return []
    rows = [[row["captures"], row["masks"], row["k"], f"{row['surviving_union']:.1f}", f"{row['identical']:.2f}",
             _fmt(row["min_norm"]), _fmt(row.get("rmle")), _fmt(row.get("rmle_advantage"), signed=True)]
            for row in r["rows"]]
    sq = ", ".join(f"{k} {v:.3f}" for k, v in r["single_query"].items())
    return [f"<h2>Repeated and near-duplicate queries ({r['n_inputs']} inputs)</h2>",
            _table(["captures", "masks", "K sends", "distinct equations", "identical payloads", f"min-norm {metric}",
                    f"rMLE {metric}", "rMLE − class prior"], rows),
            f"<p class=note>The server pools the K payloads it receives for one input. Single query of the clean "
            f"input: {sq}; {r['baseline_name']}: {r['baseline']:.3f}. Fresh masks let equations accumulate; keyed "
            "masks resend identical bytes for identical inputs only; similarity-keyed masks give near-duplicates "
            "the same mask.</p>"]


def budget_figure(curve: dict[str, Any], metric: str) -> str:
    """Held-out score per epoch of each family; with curve points, the strongest family vs public data too."""
    if not curve["points"]:
        fig, a1 = plt.subplots(1, 1, figsize=(5.2, 3.4))
        _epochs_panel(a1, curve, metric)
        fig.tight_layout()
        return _png(fig)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.4))
    _epochs_panel(a1, curve, metric)
    pts = curve["points"]
    a2.plot([p["public_train"] for p in pts], [p["test"] for p in pts], "o-", color="tab:red")
    a2.set_xscale("log")
    a2.set_xlabel("public examples the attacker trains on")
    a2.set_ylabel(f"test {metric}")
    a2.set_title(f"decoder_{curve['family']} vs public data", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def _epochs_panel(ax: Any, curve: dict[str, Any], metric: str) -> None:
    for fam, hist in curve["epochs"].items():
        ax.plot(range(1, len(hist) + 1), hist, color=COLORS.get(f"decoder_{fam}", "k"), label=fam)
    ax.set_xlabel("training epoch")
    ax.set_ylabel(f"held-out {metric}")
    ax.legend(fontsize=8)
    ax.set_title("decoders vs training epochs", fontsize=10)


def _budget_line(name: str, bud: dict[str, Any]) -> str:
    if name.startswith("decoder_"):
        return (f"{bud['architecture']} ({bud['parameters']:,} parameters, {bud['loss']} loss) trained from scratch "
                f"on {bud['public_train']:,} public examples ({bud['masks']}), early-stopped on {bud['public_val']:,} "
                f"held-out ones: {bud['stopped']} after {bud['epochs_run']} epochs (best epoch {bud['best_epoch']}, "
                f"cap {bud['max_epochs']}, patience {bud['patience']}), {bud['seconds']:.0f} s on {bud['device']}"
                + (f" (interrupted and resumed from its saved state at epoch {bud['resumed_from_epoch']})"
                   if bud.get("resumed_from_epoch") else ""))
    if name == "min_norm":
        return f"{bud['solver']}, {bud['seconds']:.1f} s"
    if name == "decoder":
        return (f"{bud['architecture']} ({bud['parameters']:,} parameters) trained from scratch on "
                f"{bud['public_examples']:,} public examples for {bud['epochs']} epochs "
                f"({'fresh masks every epoch' if bud['fresh_masks_every_epoch'] else str(bud['mask_pools']) + ' policy mask pools'}), "  # noqa: E501
                f"{bud['seconds']:.0f} s on {bud.get('torch_threads')} CPU thread(s)")
    return (f"{bud['steps']} {bud['optimizer']} steps, prior {bud['prior']}, λ = {bud['lambda']:g} chosen on "
            f"{bud['tuned_on_public']} public examples, init {bud['init']}, {bud['seconds']:.0f} s")


def _page(title: str, parts: list[str]) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{_esc(title)}</title><style>{CSS}</style>"
            f"</head><body>{''.join(parts)}</body></html>\n")
