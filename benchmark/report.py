"""report.md / report.json / report.csv and PNG plots in runs/<name>/benchmark/. All written atomically."""
import csv
import io
from datetime import datetime, timezone
from pathlib import Path


from edge_runtime.files import write_json, write_text
from edge_runtime.machine import describe

from .evaluate import REFERENCE, recommend
from .decision_report import decision_section, plot_reliability, plot_risk_coverage
from .decisions import field_warning
from .parity_report import class_section, flips_section, robustness_section, write_plots

# The headline table: the same columns in Markdown and CSV.
COLUMNS = [  # (key, header, format)
    ("variant", "variant", "{}"), ("format", "format", "{}"), ("precision", "precision", "{}"),
    ("size_mb", "size MB", "{:.2f}"), ("top1", "top-1", "{:.3f}"), ("top1_change_points", "Δ top-1 (pts)", "{:+.1f}"),
    ("top1_change_ci", "95% CI", "[{0[0]:+.1f}, {0[1]:+.1f}]"), ("agreement", "agreement", "{:.3f}"),
    ("agreement_ci", "95% CI (Wilson)", "[{0[0]:.3f}, {0[1]:.3f}]"), ("agreement_reference", "agreement vs", "{}"),
    ("float_ops", "ops kept float", "{}"), ("macro_f1", "macro-F1", "{:.3f}"), ("p50_ms", "p50 ms", "{:.2f}"),
    ("p90_ms", "p90 ms", "{:.2f}"), ("speedup_vs_keras", "speed-up vs Keras", "{:.2f}×"),
]
DETAIL = [
    ("variant", "variant", "{}"), ("runtime_settings_text", "runtime settings", "{}"),
    ("p50_ms_1thread", "p50 ms, 1 thread", "{:.2f}"),
    ("p90_ms_1thread", "p90, 1 thread", "{:.2f}"), ("p99_ms_1thread", "p99, 1 thread", "{:.2f}"),
    ("p99_ms", "p99 ms", "{:.2f}"), ("latency_runs", "timed runs", "{}"),
    ("p50_ci_relative", "p50 95% CI ±", "{:.1%}"), ("bare_p50_ms", "bare p50 ms", "{:.2f}"),
    ("runtime_overhead_pct", "runtime overhead %", "{:+.1f}"), ("end_to_end_p50_ms", "end-to-end p50 ms", "{:.2f}"),
    ("throughput_images_per_s", "throughput img/s", "{:.1f}"), ("load_seconds", "load s", "{:.2f}"),
    ("peak_rss_mb", "peak memory MB", "{:.0f}"), ("top5", "top-5", "{:.3f}"),
    ("balanced_accuracy", "balanced acc.", "{:.3f}"), ("prob_max_abs_diff", "max |Δp|", "{:.3f}"),
    ("mobile_resize_top1", "top-1, mobile resize", "{:.3f}"),
    ("mobile_resize_agreement", "same class, mobile resize", "{:.3f}"),
]


def int8_ceiling(flags):
    """What int8 can at best give over float32 on this CPU, from its flags (batch 1, compute-bound convolutions)."""
    if {"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags):
        return 4.0, "VNNI int8 dot products: about 4x float32"
    if "asimddp" in flags:
        return 3.5, "ARM dot-product instructions: about 3 to 4x float32"
    if "avx2" in flags:
        return 2.0, "AVX2 u8s8 multiply-add (no VNNI): about 2x float32"
    return 1.0, "no integer dot-product instructions known: little or no gain over float32"


def _cell(row, key, fmt):
    v = row.get(key)
    if v is None:
        return "—" if row.get("status", "ok") == "ok" else (
            {"size_mb": "FAILED", "format": row.get("format", "")}.get(key, ""))
    return fmt.format(v)


def _table(rows, columns):
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r, k, f) for k, _, f in columns) + " |" for r in rows]
    return "\n".join(lines)


def headline(report):
    """The headline table (one row per model), from the report's own data."""
    return _table(report["rows"], COLUMNS)


def verdict_text(gate):
    if gate["failures"]:
        return "FAILED: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in gate["failures"].items())
    if gate.get("inconclusive"):
        return (f"INCONCLUSIVE{' (accepted)' if gate.get('inconclusive_accepted') else ''}: {gate['images']} test "
                f"images cannot resolve the budget, which needs at least {gate['images_needed']} ({gate['rule']})")
    return "passed" + (f" ({gate['images']} test images; the budget needs at least {gate['images_needed']})"
                       if "images_needed" in gate else "")


def integer_lines(report):
    """The integer file to deploy where int8 speed matters, or why there is none."""
    integer = (report.get("recommendation") or {}).get("integer")
    if not integer:
        return []
    line = (f"- **Integer** (for a Pi or a phone): `{integer['variant']}`: {integer['why']}."
            if integer["variant"] else f"- **Integer**: {integer['why']}.")
    if integer.get("failing_integer"):
        line += f" Failing the gate: {', '.join(f'`{v}`' for v in integer['failing_integer'])}."
    return [line, ""]


def markdown(report):
    """report.md: the method and the gate, which file to deploy, then the details and the machine."""
    rows, ctx, m = report["rows"], report["context"], report["machine"]
    out = _introduction(report)
    out += _deploy_section(report)
    out += fallback_section(rows)
    out += ceiling_section(rows, m.get("cpu_flags", []))
    out += decision_section(rows, ctx)
    out += class_section(rows) + flips_section(rows) + robustness_section(rows, ctx)
    if ctx.get("skipped"):
        out += ["Not exported on purpose, so neither measured nor gated: " + ", ".join(
            f"`{k}` ({v})" for k, v in ctx["skipped"].items()), ""]
    if ctx["unavailable"]:
        out += ["Not benchmarked (no good export): " + ", ".join(f"{k} ({v})" for k, v in ctx["unavailable"].items()), ""]
    errors = [r for r in rows if r["status"] != "ok"]
    if errors:
        out += ["Failed to measure: " + "; ".join(f"{r['variant']}: {r['error']}" for r in errors), ""]
    return "\n".join(out + _detail_section(report))


def _introduction(report):
    ctx, gate = report["context"], report["gate"]
    return [f"# Benchmark: {report['run']}", "",
           f"{ctx['test_images']} held-out test images of the run's split, {len(ctx['classes'])} classes; the same "
           f"uint8 pixels reach every model. Exported models run through `edge_runtime`, the code that ships. "
           f"Latency is per image at batch 1 after {ctx['timing']['warmup']} warm-up calls, through the runtime "
           f"(quantize, infer, dequantize), with {ctx['threads'][-1]} threads unless marked 1 thread; timing stops once "
           f"the p50's 95% interval is within ±{100 * ctx['timing'].get('ci', 0):g}% of it "
           f"(±0.5% for models under 5 ms, whose runtime overhead is judged in milliseconds; "
           f"at most {ctx['timing']['max_seconds']:g} s per figure).", "",
           *([f"**{field_warning(report['rows'])}**", ""] if field_warning(report["rows"]) else []),
           headline(report), "",
           f"Δ top-1 is against the Keras model on the same {ctx['test_images']} images, with a 95% paired-bootstrap "
           f"interval; agreement is the share of images on which a variant predicts the class of the model it is "
           f"gated against (the column 'agreement vs': Keras, or for QAT trained on the labels alone its own float "
           f"source, `qat-source`, since that QAT fine-tunes away from Keras), "
           f"with a 95% Wilson interval. Ops kept float: the accuracy-aware fallback's choice on the validation split.", "",
           f"**Gate** (top-1 drop ≤ {gate['max_drop']:g} points against Keras and agreement ≥ {gate['min_agreement']:g} "
           f"against the source model; decisions under the rule agreeing with Keras's on ≥ {gate['min_agreement']:g} "
           f"of "
           f"the test images (and of the field and unknown images when given); ECE at most "
           f"{gate.get('max_ece_gap', 0.02):g} above Keras's; a missing or unmeasurable variant fails): "
           + verdict_text(gate)
           + (" (reported only: --no-gate)" if not gate["enforced"] else ""), ""]


def _deploy_section(report):
    rec = report.get("recommendation") or {}
    out = ["## Which file to deploy on this machine", ""]
    if rec:
        out += [f"- **{label}** passing the gate: `{rec[goal]['variant']}`: {rec[goal]['why']}"
                for goal, label in (("fastest", "Fastest"), ("smallest", "Smallest"), ("most_accurate", "Most accurate"))]
        out += ["", f"`make bundle RUN={report['run']}` packs the fastest; pass `VARIANT=` for another.", ""]
    else:
        out += ["No exported variant passes the gate, so none is recommended.", ""]
    return out + integer_lines(report)


def _detail_section(report):
    rows, ctx, m = report["rows"], report["context"], report["machine"]
    ok = [r for r in rows if r["status"] == "ok"]
    out = ["## Latency, memory and accuracy detail", "",
            "Bare: the interpreter alone on an already-quantized input. Runtime overhead: the runtime's p50 against "
            "bare. End-to-end: `Classifier.predict` from the image file (decode, resize, infer, top-k). "
            f"Throughput at batch {ctx['batch']}. Peak memory: the worker process's maximum resident set. "
            "Mobile resize: the same test images resized the way MediaPipe and most mobile apps do (bilinear, "
            "no antialiasing) instead of the contract's antialiased Pillow bilinear; 'same class' is the share "
            "of images on which the model predicts what it predicts from the contract's pixels.", "",
            _table(ok, DETAIL), ""]
    out += per_class_sections(ok, ctx["classes"])
    out += ["", "## Machine and versions", "",
            f"- {m['cpu']} ({m['machine']}), {m['cores']} cores, {m['memory_gib']} GiB; {m['os']}",
            f"- CPU flags that decide kernel speed: {' '.join(m.get('cpu_flags') or []) or 'none found'}",
            f"- threads: 1 and {ctx['threads'][-1]}; timing: {ctx['timing']}",
            "- " + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v), "",
            f"Command: `{report['command']}` ({report['created_at']})", "",
            "![accuracy against latency](accuracy_vs_latency.png)", "",
            "![confusion matrices](confusion_float_vs_int8.png)", ""]
    return out


def fallback_section(rows):
    """What the exporter did on the validation split to hold each integer variant's parity, and its cost."""
    fbs = [r for r in rows if r.get("fallback")]
    if not fbs:
        return []
    out = ["## Accuracy-aware fallback (decided on the validation split)", "",
           "| variant | activation ranges | validation before (Δ top-1 / agreement) | ops kept float | after | "
           "budget met | size MB | p50 ms, 1 thread |", "|---|---|---|---|---|---|---|---|"]
    for r in fbs:
        fb, cost = r["fallback"], r["fallback"].get("cost") or {}
        b, a = fb["validation_before"], fb["validation_after"]
        n = len(fb.get("kept_float_layers") or [])
        kept = (f"{n} of {fb['candidate_ops']}, " + (f"from `{fb['float_from']}` to the output" if fb.get("float_from")
                                                     else "single ops") if n else "none")
        if n and (fb.get("float_weights") or {}).get("int8"):
            kept += f" (int8 weights in {fb['float_weights']['ops']} of them)"
        size = (f"{cost['bytes_full_int8'] / 1e6:.1f} → {cost['bytes'] / 1e6:.1f}" if cost else "—")
        p50 = (f"{cost['p50_ms_1thread_full_int8']:.1f} → {cost['p50_ms_1thread']:.1f}" if cost else "—")
        out.append(f"| {r['variant']} | {r.get('activation_ranges') or '—'} | {b['top1_change_points']:+.1f} / "
                   f"{b['agreement']:.3f} | {kept} | {a['top1_change_points']:+.1f} / {a['agreement']:.3f} | "
                   f"{'yes' if fb['met_budget'] else '**no**'} | {size} | {p50} |")
    for r in fbs:
        line = bias_correction_line(r)
        if line:
            out.append(f"\n`{r['variant']}`: {line}.")
    for r in fbs:
        layers = r["fallback"].get("kept_float_layers") or []
        if layers:
            out.append(f"\n`{r['variant']}` keeps these ops float: {', '.join(f'`{x}`' for x in layers)}.")
    return out + [""]


def bias_correction_line(row):
    """What bias correction did for one integer file, in words; None where the exporter never considered it."""
    bc = row.get("bias_correction")
    if not bc:
        return None
    if not bc.get("tried"):
        return f"bias correction not tried ({bc.get('why')})"
    p, c = bc["validation_plain"], bc["validation_corrected"]
    return (f"bias correction {'kept' if bc['kept'] else 'tried, not kept'} ({bc['layers']} layers from "
            f"{bc['images']} calibration images): validation agreement {p['agreement']:.3f} → {c['agreement']:.3f}, "
            f"mean |Δp| {p['mean_abs_prob_diff']:.4f} → {c['mean_abs_prob_diff']:.4f}, "
            f"Δ top-1 {p['top1_change_points']:+.1f} → {c['top1_change_points']:+.1f} pts")


def ceiling_section(rows, flags):
    """Each int8 variant's speed-up over float32 TFLite at 1 thread, beside what this CPU can at best give."""
    from export.variants import get

    ok = {r["variant"]: r for r in rows if r["status"] == "ok" and r.get("p50_ms_1thread")}
    base = ok.get("tflite-fp32")
    int8 = [r for n, r in ok.items() if get(n) and get(n).calibrated]
    if not base or not int8:
        return []
    best, why = int8_ceiling(flags)
    out = ["## Integer speed-up against this CPU's ceiling", "",
           f"CPU flags: {' '.join(flags) or 'unknown'}. Ceiling: {why}. Speed-up is tflite-fp32's p50 over the "
           f"variant's, batch 1, 1 thread. Above 100%: float32 ran below this CPU's float peak (memory-bound "
           f"layers, for one), so int8 gained more than arithmetic alone explains.", "",
           "| variant | p50 ms, 1 thread | speed-up vs tflite-fp32 | share of the ceiling |",
           "|---|---|---|---|"]
    for r in int8:
        x = base["p50_ms_1thread"] / r["p50_ms_1thread"]
        out.append(f"| {r['variant']} | {r['p50_ms_1thread']:.2f} | {x:.2f}× | {x / best:.0%} of {best:g}× |")
    return out + [""]


def per_class_sections(ok, classes):
    """Per-class recall for every class; with many classes, the worst ones and the most confused pairs."""
    from runlib.metrics import MATRIX_LIMIT, worst_recall

    head = ["| class | " + " | ".join(r["variant"] for r in ok) + " |", "|---|" + "---|" * len(ok)]
    if len(classes) <= MATRIX_LIMIT or not ok:
        return ["## Per-class recall", "", *head] + [
            f"| {c} | " + " | ".join(f"{r['per_class_recall'][c]:.2f}" for r in ok) + " |" for c in classes] + [""]
    ref = next((r for r in ok if r["variant"] == REFERENCE), ok[0])
    worst = [c for c, _ in worst_recall(ref["per_class_recall"])]
    out = [f"## Per-class recall: the {len(worst)} worst of {len(classes)} classes (by {ref['variant']})", "", *head]
    out += [f"| {c} | " + " | ".join(f"{r['per_class_recall'][c]:.2f}" for r in ok) + " |" for c in worst]
    out += ["", f"## Most confused pairs ({ref['variant']})", "", "| true | predicted | images | share of the class |",
            "|---|---|---|---|"]
    out += [f"| {p['true']} | {p['predicted']} | {p['count']} | {p['share']:.2f} |" for p in ref.get("most_confused", [])]
    return out + [""]


def csv_text(rows):
    keys = [k for k, _, _ in COLUMNS] + [k for k, _, _ in DETAIL if k != "variant"] + [
        "mcnemar_p", "prob_mean_abs_diff", "status", "error"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(keys)
    for r in rows:
        w.writerow(["" if r.get(k) is None else (f"{r[k]:.6g}" if isinstance(r[k], float) else
                     " ".join(f"{x:.6g}" for x in r[k]) if isinstance(r[k], (list, tuple)) else r[k]) for k in keys])
    return buf.getvalue()


def plot_accuracy_vs_latency(rows, path, max_drop):
    from runlib.plots import plt, save

    ok = [r for r in rows if r["status"] == "ok" and r.get("p50_ms")]  # timed rows only
    fig, ax = plt.subplots(figsize=(8, 5.5))
    colors = {"keras": "black", "tflite": "tab:blue", "onnx": "tab:orange"}
    for r in ok:
        ax.scatter(r["p50_ms"], 100 * r["top1"], s=30 + 8 * r["size_mb"], alpha=0.6, color=colors.get(r["format"], "grey"),
                   edgecolors="black", linewidths=0.5)
    ref = next((r for r in ok if r["variant"] == REFERENCE), None)
    if ref:
        top = max(100 * r["top1"] for r in ok) + 0.5
        ax.axhspan(100 * ref["top1"] - max_drop, top, color="green", alpha=0.08,
                   label=f"top-1 passes the gate (at most {max_drop:g} point(s) below Keras)")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xscale("log")
    ys = [100 * r["top1"] for r in ok]
    ax.set_ylim(min(ys) - 3, max(ys) + 3)  # room for labels pushed above or below their points
    _place_labels(fig, ax, ok)
    ax.set_xlabel("p50 latency per image, batch 1 (ms, log scale)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("accuracy against latency (marker area: file size)")
    ax.grid(alpha=0.3, which="both")
    save(fig, path)


def _text_box(annotation, renderer):
    """The box of an annotation's text alone (its leader line may cross other labels)."""
    from matplotlib.text import Text

    annotation.get_window_extent(renderer)  # lays it out
    return Text.get_window_extent(annotation, renderer)


def _place_labels(fig, ax, rows):
    """Label every point without overlaps: each label tries offsets around its point (nearest first)
    until its box meets no label placed before it; a thin line joins a moved label to its point."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    placed = []
    offsets = [(6, 4)] + [(dx, dy) for step in range(1, 12) for dy in (4 + 11 * step, 4 - 11 * step) for dx in (6, 40)]
    def annotate(r, offset):
        return ax.annotate(f"{r['variant']} ({r['size_mb']:.1f} MB)", (r["p50_ms"], 100 * r["top1"]), fontsize=7,
                           xytext=offset, textcoords="offset points", va="center",
                           arrowprops=None if offset == offsets[0] else
                           dict(arrowstyle="-", color="grey", lw=0.5, shrinkA=0, shrinkB=3))

    for r in sorted(rows, key=lambda r: (-r["top1"], r["p50_ms"])):
        for offset in offsets:
            label = annotate(r, offset)
            box = _text_box(label, renderer).expanded(1.02, 1.15)
            if not any(box.overlaps(b) for b in placed):
                placed.append(box)
                break
            label.remove()
        else:  # no free spot nearby: keep the first one rather than lose the label
            annotate(r, offsets[0])


def plot_confusions(rows, classes, path):
    """The Keras float model beside the full-int8 models (or whatever else was measured)."""
    from runlib.plots import confusion_matrices

    ok = {r["variant"]: r for r in rows if r["status"] == "ok"}
    from export.variants import from_names

    int8 = [v.name for v in from_names(None) if v.calibrated and v.name in ok]  # the integer-activation variants
    names = [REFERENCE] + (int8 or [n for n in ok if n != REFERENCE][:1])
    panels = [(f"{n} (top-1 {ok[n]['top1']:.3f})", ok[n]["confusion_matrix"]) for n in names if n in ok]
    confusion_matrices(panels, classes, path)


def write(run, rows, context, gate, pixels=None):
    """report.json, .csv, .md and the PNGs; pixels: the test images, for the flip galleries. The report
    names the command and the package versions that wrote it."""
    import shlex
    import sys

    from runlib.versions import package_versions

    versions = package_versions(("tensorflow", "tf-keras", "ai-edge-litert", "onnxruntime", "numpy", "Pillow"))
    command = " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]])  # the process that wrote it
    out = run.benchmark_dir
    out.mkdir(parents=True, exist_ok=True)
    report = {"run": str(run.path), "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": command, "machine": describe(), "versions": versions, "context": context, "gate": gate,
              "recommendation": recommend(rows, gate["failures"]), "rows": rows}
    write_json(out / "report.json", report)
    write_text(out / "report.csv", csv_text(rows))
    write_text(out / "report.md", markdown(report))
    plot_accuracy_vs_latency(rows, out / "accuracy_vs_latency.png", gate["max_drop"])
    plot_confusions(rows, context["classes"], out / "confusion_float_vs_int8.png")
    plot_reliability(rows, out / "reliability.png")
    plot_risk_coverage(rows, out / "risk_coverage.png")
    if pixels is not None:
        write_plots(report, pixels, out)
    return report
