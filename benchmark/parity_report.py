"""The report's parity detail: per-class recall against the Keras model's, the flip gallery, and agreement
under corruption, as Markdown sections and PNG plots beside report.md."""
import numpy as np

FLIPS_SHOWN = 24  # thumbnails per flip gallery, and rows per flip table; the full list is in report.json


def _deployable(rows):
    return [r for r in rows if r["status"] == "ok" and r.get("class_parity")]


def class_section(rows):
    """Per variant: every class that lost recall against the Keras model, worst first, with the exact test."""
    rows = _deployable(rows)
    if not rows:
        return []
    out = ["## Per-class parity", "",
           "Each class's recall beside the Keras model's on its test images; images lost (right for Keras, wrong "
           "here) and gained; p: the exact two-sided sign test of lost against gained within the class. Classes "
           "below the per-class budget fail the gate (docs/benchmark.md). Only classes that lost ground are listed; "
           "`class_parity` in report.json has every class.", "",
           "| variant | class | images | recall | Keras | change (pts) | lost / gained | p | within budget |",
           "|---|---|---|---|---|---|---|---|---|"]
    missed = {r["variant"]: {m.split(":")[0].removeprefix("class ") for m in r.get("class_misses") or []} for r in rows}
    for r in rows:
        dropped = sorted(((c, v) for c, v in r["class_parity"].items() if v["n"] and v["change_points"] < 0),
                         key=lambda cv: cv[1]["change_points"])
        if not dropped:
            out.append(f"| {r['variant']} | (no class lost recall) | | | | | | | yes |")
        for c, v in dropped:
            out.append(f"| {r['variant']} | {c} | {v['n']} | {v['recall']:.3f} | {v['reference_recall']:.3f} | "
                       f"{v['change_points']:+.1f} | {v['lost']} / {v['gained']} | {v['p']:.3f} | "
                       f"{'**no**' if c in missed[r['variant']] else 'yes'} |")
    return out + ["", "![per-class recall change](class_parity.png)", ""]


def flips_section(rows, shown=FLIPS_SHOWN):
    rows = [r for r in _deployable(rows) if r.get("flips") is not None]
    if not rows:
        return []
    out = ["## Flips: test images whose top-1 differs from the model each file is gated against", "",
           "| variant | flips | gallery |", "|---|---|---|"]
    out += [f"| {r['variant']} | {len(r['flips'])} | " + (f"![flips]({gallery_name(r['variant'])})" if r["flips"] else "—")
            + " |" for r in rows]
    for r in rows:
        if not r["flips"]:
            continue
        out += ["", f"`{r['variant']}` ({len(r['flips'])} flip{'s' if len(r['flips']) != 1 else ''} against "
                f"`{r['agreement_reference']}`"
                + (f"; the first {shown} shown" if len(r["flips"]) > shown else "") + "):", "",
                "| image | true | this file | p | reference | p |", "|---|---|---|---|---|---|"]
        out += [f"| {f['image']} | {f['true']} | {f['predicted']} | {f['probability']:.3f} | {f['reference_predicted']} "
                f"| {f['reference_probability']:.3f} |" for f in r["flips"][:shown]]
    return out + [""]


def robustness_section(rows, ctx):
    rc = ctx.get("robustness")
    rows = [r for r in rows if r["status"] == "ok" and r.get("robustness")]
    if not rc or not rows:
        return []
    names = rc["corruptions"]
    out = ["## Under corruption", "",
           f"{rc['images']} test images (spread over the classes), each corrupted {len(names)} ways (runlib/"
           f"corruptions.py: {len(names) // 3} corruptions at 3 severities, seed {rc['seed']}). Top-1 of the Keras "
           f"model, then each file's agreement with it on the same corrupted images. Seconds each model spent on them: "
           + ", ".join(f"{r['variant']} {r['robustness']['seconds']:.1f}" for r in rows if r["robustness"].get("seconds"))
           + ".", "",
           "| corruption | Keras top-1 | " + " | ".join(r["variant"] for r in rows if r["variant"] != "keras") + " |",
           "|---|---|" + "---|" * (len(rows) - 1)]
    keras = next((r for r in rows if r["variant"] == "keras"), None)
    for name in names:
        cells = [f"{r['robustness']['by_corruption'][name]['agreement']:.3f}" for r in rows if r["variant"] != "keras"]
        top1 = f"{keras['robustness']['by_corruption'][name]['top1']:.3f}" if keras else "—"
        out.append(f"| {name} | {top1} | " + " | ".join(cells) + " |")
    return out + ["", "![agreement under corruption](robustness.png)", ""]


def gallery_name(variant):
    return f"flips_{variant}.png"


def plot_class_parity(rows, classes, path):
    from runlib.plots import plt, save

    rows = [r for r in _deployable(rows)]
    if not rows:
        return
    shown = classes if len(classes) <= 40 else sorted(
        classes, key=lambda c: min(r["class_parity"][c]["change_points"] for r in rows))[:40]
    grid = np.array([[r["class_parity"][c]["change_points"] for r in rows] for c in shown])
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(rows), 1.2 + 0.28 * len(shown)))
    lim = max(10.0, float(np.abs(grid).max()))
    im = ax.imshow(grid, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(len(rows)), [r["variant"] for r in rows], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(shown)), shown, fontsize=7)
    for i in range(len(shown)):
        for j in range(len(rows)):
            if grid[i, j]:
                ax.text(j, i, f"{grid[i, j]:+.0f}", ha="center", va="center", fontsize=6)
    fig.colorbar(im, ax=ax, label="recall change against Keras (points)")
    ax.set_title("per-class recall change" + ("" if shown is classes else f" (the {len(shown)} classes that lost most)"))
    save(fig, path)


def plot_flips(row, pixels, path, shown=FLIPS_SHOWN):
    from runlib.plots import plt, save

    flips = row["flips"][:shown]
    cols = min(6, len(flips))
    nrows = (len(flips) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(2.3 * cols, 2.6 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, f in zip(axes.ravel(), flips):
        ax.imshow(pixels[f["index"]])
        ax.set_title(f"true {f['true']}\n{row['variant']}: {f['predicted']} {f['probability']:.2f}\n"
                     f"ref: {f['reference_predicted']} {f['reference_probability']:.2f}", fontsize=6)
    extra = f" (the first {shown} of {len(row['flips'])})" if len(row["flips"]) > shown else ""
    fig.tight_layout()
    fig.suptitle(f"{row['variant']}: test images whose top-1 differs from {row['agreement_reference']}{extra}",
                 fontsize=9, y=1.0 + 0.12 / nrows)  # above the first row's titles; the saved box grows to hold it
    save(fig, path)


def plot_robustness(rows, ctx, path):
    from runlib.plots import plt, save

    rc = ctx.get("robustness")
    rows = [r for r in rows if r["status"] == "ok" and r.get("robustness") and r["variant"] != "keras"]
    if not rc or not rows:
        return
    kinds = list(dict.fromkeys(n.split("/")[0] for n in rc["corruptions"]))
    fig, axes = plt.subplots(1, len(kinds), figsize=(2.2 * len(kinds), 2.8), sharey=True)
    for ax, kind in zip(np.atleast_1d(axes), kinds):
        for r in rows:
            by = r["robustness"]["by_corruption"]
            ax.plot([1, 2, 3], [by[f"{kind}/{s}"]["agreement"] for s in (1, 2, 3)], "o-", ms=3, label=r["variant"])
        ax.set_title(kind.replace("_", " "), fontsize=8)
        ax.set_xticks([1, 2, 3])
        ax.set_xlabel("severity", fontsize=7)
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("agreement with Keras")
    np.atleast_1d(axes)[-1].legend(fontsize=6, loc="lower left")
    save(fig, path)


def write_plots(report, pixels, folder):
    """The parity PNGs of a report (pixels: the test images, for the galleries)."""
    rows, ctx = report["rows"], report["context"]
    plot_class_parity(rows, ctx["classes"], folder / "class_parity.png")
    plot_robustness(rows, ctx, folder / "robustness.png")
    for r in _deployable(rows):
        if r.get("flips"):
            plot_flips(r, pixels, folder / gallery_name(r["variant"]))
