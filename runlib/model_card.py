"""MODEL_CARD.md: the facts of a run that a person reads, generated from the run's own JSON files only
(config.json, data_report.json, metrics.json, export/manifest.json, benchmark/report.json), never by hand.
`edgeclf benchmark` writes it into the run folder; `edgeclf bundle` ships it."""
import json

from edge_runtime.preprocess import fit_of

from .metrics import wilson_interval

CARD = "MODEL_CARD.md"


def _load(path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _ci(rate, n):
    lo, hi = wilson_interval(round(rate * n), n)
    return f"{rate:.3f} [{lo:.3f}, {hi:.3f}]"


def facts(run):
    """Everything the card states, from the run's JSON (what the test compares the card against)."""
    return {"config": run.config(), "data": _load(run.data_report) or {}, "metrics": _load(run.metrics) or {},
            "manifest": _load(run.export_manifest) or {}, "report": _load(run.benchmark_dir / "report.json") or {},
            "classes": run.class_names()}


def render(run):
    f = facts(run)
    cfg, data, metrics, manifest, report = f["config"], f["data"], f["metrics"], f["manifest"], f["report"]
    out = [f"# Model card: {run.path.name}", ""]
    out += _purpose(cfg, f["classes"]) + _data(data) + _recipe(cfg) + _metrics(metrics, f["classes"])
    out += _variants(report, manifest) + _decisions(manifest, report) + _chain(cfg, manifest, report)
    out += _limits(metrics, report)
    return "\n".join(out) + "\n"


def _purpose(cfg, classes):
    h, w = cfg["image_size"]
    return ["## Purpose", "",
            f"An image classifier for {len(classes)} classes "
            f"({', '.join(classes[:20])}{', ...' if len(classes) > 20 else ''}), fine-tuned from `{cfg['backbone']}` "
            f"({'ImageNet weights' if cfg['weights'] not in ('none', None) else 'random weights'}). "
            f"It takes one RGB image, {'its centre cropped to the input shape and ' if fit_of(cfg) == 'crop' else ''}"
            f"resized {'whole ' if fit_of(cfg) == 'squash' else ''}to {h}x{w} (the preprocessing contract: Pillow's "
            f"bilinear, EXIF orientation applied, transparency over white; normalisation inside the model), and returns "
            f"a probability per class, or \"unknown\" under the decision rule below.", ""]


def _data(data):
    if not data:
        return []
    split = data.get("split", {})
    d = data.get("duplicates") or {}
    rows = ["| class | images | train | val | test |", "|---|---|---|---|---|"]
    rows += [f"| {c} | {n} | {split.get('train', {}).get(c, 0)} | {split.get('val', {}).get(c, 0)} | "
             f"{split.get('test', {}).get(c, 0)} |" for c, n in data.get("per_class", {}).items()]
    dup = (f"Copies: {d.get('exact_copies', 0)} exact copies, {d.get('near_pairs', 0)} near-copy pairs "
           f"({d.get('near_pairs_across_classes', 0)} across classes), {len(d.get('conflicts', []))} conflicts (the same "
           f"bytes under two labels, left out); copies are kept in one subset of the split." if d else
           "Copies: not searched (a run trained before the search existed).")
    return ["## Data", "", f"{data.get('files_listed')} files listed, {data.get('images_used')} used, "
            f"{data.get('skipped')} skipped ({data.get('skipped_by_reason') or 'none'}). {dup}", "", *rows, ""]


def _recipe(cfg):
    keys = ("backbone", "alpha", "weights", "image_size", "epochs_head", "epochs_finetune", "batch_size", "lr",
            "lr_finetune", "schedule", "warmup_epochs", "clip_norm", "augment", "flip", "use_class_weights",
            "max_per_class", "unfreeze_from", "train_bn", "precision", "seed")
    shown = ", ".join(f"{k} `{cfg.get(k)}`" for k in keys if k in cfg)
    return ["## Recipe", "", f"{shown}. Phase 1 fits the head on the frozen backbone, phase 2 trains the deeper layers "
            f"(docs/training.md: the recipe, and the ablations on the Leeds butterflies behind its defaults). "
            f"Class weights: {'balanced' if cfg.get('use_class_weights') else 'off'}. Command: `{cfg.get('command')}`.", ""]


def _metrics(metrics, classes):
    out = ["## Metrics (the Keras model)", "", "| split | images | top-1 [95% CI] | top-5 | macro-F1 | balanced accuracy |",
           "|---|---|---|---|---|---|"]
    for split in ("val", "test"):
        m = metrics.get(split)
        if m:
            out.append(f"| {split} | {m['n']} | {_ci(m['top1'], m['n'])} | "
                       f"{'—' if m.get('top5') is None else format(m['top5'], '.3f')} | {m['macro_f1']:.3f} | "
                       f"{m['balanced_accuracy']:.3f} |")
    test = metrics.get("test")
    if test:
        counts = [sum(r) for r in test["confusion_matrix"]]
        out += ["", "Per-class recall on the test split (with its images):", "",
                "| class | test images | recall |", "|---|---|---|"]
        out += [f"| {c} | {counts[i]} | {test['per_class_recall'][c]:.3f} |" for i, c in enumerate(classes)]
    return out + [""]


def _variants(report, manifest):
    rows = [r for r in report.get("rows", []) if r.get("status") == "ok" and r["variant"] != "qat-source"]
    if not rows:
        return ["## Exported files", "", "No benchmark yet.", ""]
    m = report.get("machine", {})
    entries = manifest.get("variants", {})
    out = ["## Exported files", "", f"Measured on {report.get('context', {}).get('test_images')} test images; latency on "
           f"{m.get('cpu')} ({m.get('cores')} cores, CPU flags {' '.join(m.get('cpu_flags') or [])})"
           f", {report.get('created_at')}.",
           "", "| file | MB | p50 ms (1 thread / all) | top-1 | agreement [95% CI] | vs | classes below budget | "
           "ops kept float | mean agreement under corruption |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ci = r.get("agreement_ci")
        agree = "—" if r.get("agreement") is None else (
            f"{r['agreement']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{r['agreement']:.3f}")
        p50 = "—" if r.get("p50_ms") is None else f"{r['p50_ms_1thread']:.2f} / {r['p50_ms']:.2f}"
        rob = r.get("robustness") or {}
        rob_agree = [v["agreement"] for v in rob.get("by_corruption", {}).values() if v.get("agreement") is not None]
        fb = (entries.get(r["variant"]) or {}).get("fallback") or {}
        out.append(f"| `{r['variant']}` | {r['size_mb']:.2f} | {p50} | {r['top1']:.3f} | {agree} | "
                   f"{r.get('agreement_reference') or '—'} | {len(r.get('class_misses') or [])} | "
                   f"{len(fb.get('kept_float') or [])} | {sum(rob_agree) / len(rob_agree):.3f} |" if rob_agree else
                   f"| `{r['variant']}` | {r['size_mb']:.2f} | {p50} | {r['top1']:.3f} | {agree} | "
                   f"{r.get('agreement_reference') or '—'} | {len(r.get('class_misses') or [])} | "
                   f"{len(fb.get('kept_float') or [])} | — |")
    gate = report.get("gate", {})
    verdict = ("passed" if not gate.get("failures") and not gate.get("inconclusive") else
               "inconclusive" if not gate.get("failures") else "FAILED for " + ", ".join(gate["failures"]))
    out += ["", f"Parity gate ({gate.get('max_drop')} points of top-1, agreement {gate.get('min_agreement')}, per class "
            f"{gate.get('max_class_drop', '—')} points and {gate.get('class_images', '—')} images): {verdict}.", ""]
    for r in rows:
        bc = r.get("bias_correction") or {}
        if bc.get("tried"):
            p, c = bc["validation_plain"], bc["validation_corrected"]
            out += [f"`{r['variant']}`: bias correction {'kept' if bc['kept'] else 'tried and not kept'}, validation "
                    f"agreement {p['agreement']:.3f} → {c['agreement']:.3f}.", ""]
    integer = (report.get("recommendation") or {}).get("integer")
    if integer:
        out += [f"Integer file for a Pi or a phone: `{integer['variant']}` ({integer['why']})." if integer["variant"]
                else f"Integer file for a Pi or a phone: none ({integer['why']}).", ""]
    return out


def _chain(cfg, manifest, report):
    out = ["## Hash chain", "", "Each step records the SHA-256 of what it came from:", "",
           "- the images: each file's SHA-256 in `split.csv`",
           f"- `split.csv`: `{cfg.get('split_sha256') or 'not recorded (an older run)'}` (config.json)",
           f"- `model.keras`: `{(manifest.get('source_model') or {}).get('sha256', '—')}` (export/manifest.json)"]
    out += [f"- `{e['file']}`: `{e['sha256']}`" for e in manifest.get("variants", {}).values() if e.get("status") == "ok"]
    measured = [r for r in report.get("rows", []) if r.get("sha256")]
    if measured:
        same = all((manifest.get("variants", {}).get(r["variant"]) or {}).get("sha256") == r["sha256"]
                   for r in measured if r["variant"] not in ("keras", "qat-source"))
        out.append(f"- benchmark/report.json measured {len(measured)} files by these checksums"
                   + ("" if same else " (some files were re-exported since: benchmark again)"))
    return out + [""]


def _decisions(manifest, report):
    """The decision rule, and the field check when the benchmark had field photos."""
    d = manifest.get("decision")
    if not d:
        return []
    out = ["## Confidence and \"unknown\"", "",
           f"Probabilities are calibrated (top-label temperature scaling, T = {d['temperature']:.3f}, fitted on "
           f"{d.get('fitted_on', 'the validation split')}); the model answers \"unknown\" when its calibrated "
           f"confidence is under {d['threshold']:.3f} ({d.get('threshold_rule', '')}; "
           f"{d.get('validation_coverage', float('nan')):.1%} of validation images answered). Every exported file "
           "applies the same rule, and the benchmark gates each on making the Keras model's decisions.", ""]
    keras = next((r for r in report.get("rows", []) if r["variant"] == "keras"), None)
    t = ((keras or {}).get("decisions") or {}).get("test")
    if t:
        out += [f"On the test split the Keras model answers {t['coverage']:.1%} of the images, "
                f"{t['selective_accuracy']:.1%} of those answers right.", ""]
    field = ((keras or {}).get("decisions") or {}).get("field")
    meta = ((report.get("context") or {}).get("outside") or {}).get("field")
    if field and meta:
        nan = float("nan")
        out += ["## In the field", "",
                f"{meta['images']} photos from `{meta['folder']}` (known species: {', '.join(meta['known_folders'])}; "
                f"species it must not name: {', '.join(meta['unknown_folders']) or 'none'}), the Keras model:", "",
                f"- top-1 on the known species {field.get('top1', nan):.3f} (test split: {keras['top1']:.3f});",
                f"- under the rule it answers {field.get('coverage', nan):.1%} of them, "
                f"{field.get('selective_accuracy', nan):.1%} of those right;",
                f"- it still names a species for {field.get('unknown_named', nan):.1%} of the photos of species it was "
                f"not trained on (AUROC of its confidence, known against unknown, {field.get('auroc', nan):.2f}).",
                ""]
    return out


def _limits(metrics, report):
    test = metrics.get("test") or {}
    pairs = test.get("most_confused") or []
    out = ["## Known confusions and limits", ""]
    if pairs:
        out += ["Most confused on the test split (true → predicted, images, share of the class):", ""]
        out += [f"- {p['true']} → {p['predicted']}: {p['count']} ({p['share']:.0%})" for p in pairs[:10]]
        out.append("")
    keras = next((r for r in report.get("rows", []) if r["variant"] == "keras"), None)
    if keras and keras.get("mobile_resize_agreement") is not None:
        out.append(f"- Resized the way most mobile apps do (bilinear without antialiasing), the Keras model keeps its "
                   f"answer on {keras['mobile_resize_agreement']:.1%} of the test images: resize as the contract says.")
    field = ((keras or {}).get("decisions") or {}).get("field")
    out += ([f"- On field photos (above) its top-1 on the known species was {field['top1']:.3f}, against "
             f"{keras['top1']:.3f} on the test split." if field and field.get("top1") is not None else
             "- It was tested only on images like its own test split (no field photos were given to the benchmark); "
             "photos from other cameras, places or seasons can score lower."]
            + ["- An image of none of its classes gets a class whenever its calibrated confidence clears the threshold; "
               "the rule lowers that risk, it does not remove it.",
               "- The test split is small: every rate above comes with its 95% interval.", ""])
    return out


def write(run):
    from edge_runtime.files import write_text

    write_text(run.path / CARD, render(run))
    return run.path / CARD
