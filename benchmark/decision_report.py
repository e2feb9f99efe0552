"""report.md's decision and field sections, and their plots (reliability diagram, risk against coverage)."""


def _f(v, fmt="{:.3f}"):
    return "—" if v is None or v != v else fmt.format(v)


def _ci(part):
    if not part or part.get("agreement") is None:
        return "—"
    lo, hi = part["agreement_ci"]
    return f"{part['agreement']:.3f} [{lo:.3f}, {hi:.3f}]"


def decision_section(rows, ctx):
    rows = [r for r in rows if r["status"] == "ok" and r.get("decisions")]
    rule = ctx.get("decision_rule") or {}
    if not rows:
        return []
    out = ["## Decisions: calibrated confidence and \"unknown\"", "",
           f"Every file is judged by the run's one rule, from the export manifest and applied as the device applies it: "
           f"probabilities calibrated with temperature {rule.get('temperature', 1):.3f}, then the top class when the "
           f"calibrated confidence is at least {rule.get('threshold', 0):.3f}, else \"unknown\" (edge_runtime/"
           f"decision.py). ECE (15 bins) and NLL on the test split before → after calibration; coverage: the share of "
           f"test images answered; accuracy of the answers given; decision agreement with the Keras model (the same class, "
           f"or both unknown) with its 95% Wilson interval.", "",
           "| model | ECE | NLL | coverage | accuracy of answers | decision agreement |", "|---|---|---|---|---|---|"]
    for r in rows:
        c, t = r["decisions"]["calibration"], r["decisions"]["test"]
        out.append(f"| {r['variant']} | {c['ece_raw']:.3f} → {c['ece']:.3f} | {c['nll_raw']:.3f} → {c['nll']:.3f} | "
                   f"{_f(t.get('coverage'))} | {_f(t.get('selective_accuracy'))} | {_ci(t)} |")
    out += ["", "![reliability diagram](reliability.png)", ""]
    return out + field_section(rows, ctx)


def field_section(rows, ctx):
    meta = ctx.get("outside") or {}
    out = []
    if meta.get("field"):
        f = meta["field"]
        out += ["## The field check", "",
                f"{f['images']} photos from `{f['folder']}`: {', '.join(f['known_folders']) or 'no folder'} counted as "
                f"their class; {', '.join(f['unknown_folders']) or 'no folder'} as species the model must not name. "
                "Top-1: on the known species, answering every photo. Coverage and accuracy of answers: under the rule. "
                "Correct: the share of known-species photos answered with the right class. Unknown named: the share "
                "of other species' photos still given a class. AUROC: how well the calibrated confidence separates "
                "known from unknown species (0.5: not at all). Holdout: the same figures on the fixed half of the "
                "field folder no training choice was made on (runlib/field.py).", "",
                "| model | top-1 | coverage | accuracy of answers | correct | unknown named | AUROC | holdout top-1 "
                "| holdout unknown named | decision agreement |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            p = r["decisions"].get("field") or {}
            h = p.get("holdout") or {}
            out.append(f"| {r['variant']} | {_f(p.get('top1'))} | {_f(p.get('coverage'))} | "
                       f"{_f(p.get('selective_accuracy'))} | {_f(p.get('correct_answers'))} | "
                       f"{_f(p.get('unknown_named'))} | "
                       f"{_f(p.get('auroc'))} | {_f(h.get('top1'))} | {_f(h.get('unknown_named'))} | {_ci(p)} |")
        out += ["", "![risk against coverage on the field photos](risk_coverage.png)", ""]
    if meta.get("unknown"):
        u = meta["unknown"]
        out += [f"**Unknown images** (`{u['folder']}`, {u['images']} images"
                + ("; export tuned the threshold on them, so this is no estimate of new ones" if
                   u.get("export_tuned_the_rule_on_it") else "") + "): named by "
                + ", ".join(f"`{r['variant']}` {_f((r['decisions'].get('unknown') or {}).get('unknown_named'))}"
                            for r in rows)
                + "; decision agreement with Keras "
                + ", ".join(f"`{r['variant']}` {_ci(r['decisions'].get('unknown'))}"
                            for r in rows if r["variant"] != "keras")
                + ".", ""]
    if not meta.get("field"):
        out += ["No field photos were given (`--field DIR`): the test split comes from the same photo source as the "
                "training images, so its figures say little about photos taken elsewhere.", ""]
    return out


def plot_reliability(rows, path):
    from runlib.plots import plt, save

    rows = [r for r in rows if r["status"] == "ok" and r.get("decisions")]
    if not rows:
        return
    keras = rows[0]
    picks = [keras] + [r for r in rows[1:] if "int8" in r["variant"]][:2]
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharey=True)
    for ax, key, title in ((axes[0], "reliability_raw", "as the model outputs them"),
                           (axes[1], "reliability", "calibrated (the rule's temperature)")):
        ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--")
        for r in picks:
            bins = r["decisions"]["calibration"][key]
            ax.plot([b[1] for b in bins], [b[2] for b in bins], marker="o", label=f"{r['variant']} "
                    f"(ECE {r['decisions']['calibration']['ece' if key == 'reliability' else 'ece_raw']:.3f})")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("confidence (top probability)")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("accuracy on the test split")
    save(fig, path)


def plot_risk_coverage(rows, path):
    from runlib.plots import plt, save

    rows = [r for r in rows if r["status"] == "ok" and (r.get("decisions") or {}).get("field", {}).get("risk_coverage")]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for r in rows:
        curve = r["decisions"]["field"]["risk_coverage"]
        ax.plot([c for c, _ in curve], [a for _, a in curve], label=r["variant"], lw=1.2)
        cov = r["decisions"]["field"].get("coverage")
        if cov is not None and r["variant"] == "keras":
            ax.axvline(cov, color="grey", ls=":", lw=1)
    ax.set_xlabel("coverage: share of known-species field photos answered")
    ax.set_ylabel("accuracy of the answers")
    ax.set_title("Field photos: accuracy against coverage (dotted: the rule)", fontsize=10)
    ax.legend(fontsize=7)
    save(fig, path)
