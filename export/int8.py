"""The one int8 driver: calibrate, observe, choose activation ranges, quantize, keep ops float where the
parity budget needs it. Both formats plug in (tflite_convert.TFLiteInt8, onnx_convert.OnnxInt8) with:

    suffix                 the file extension
    calibrate()            calibrate once and observe every activation on the calibration images
                           (again on the bias-corrected model when that is tried: bias_correction below)
    write(method, path)    the fully quantized file with that choice of activation ranges (export/ranges.py)
    use(method)            keep that choice for what follows
    candidates(path)       the ops that may stay float, in the order they run
    quantize(ops, path)    a file with those ops kept float (each call well under a second)
    compact                None, or compact(src, dst): src with its float ops' weights in int8
    finish(src, path)      the chosen file, as it ships
    record                 extra manifest fields of the format

Each file is measured through edge_runtime (the code that ships) on the validation split; the test
split stays for the benchmark.
"""
import tempfile
from pathlib import Path

from . import ranges
from runlib.scratch import prefix

from .fallback import Search, decided, measure
from .stopwatch import Stopwatch


def export_int8(fmt, ctx, path):
    """Write the int8 file of format class `fmt` to `path`; returns its manifest fields."""
    stages = Stopwatch()
    with tempfile.TemporaryDirectory(prefix=prefix(f"int8-{fmt.__name__}")) as work:
        work = Path(work)
        f = fmt(ctx, work)
        f.calibrate()
        stages.lap("calibration")

        def write(method):
            return f.write(method, work / f"ranges-{method.replace('@', '-from-')}{f.suffix}")

        method, ranges_record, full = ranges.choose(write, lambda p: measure(p, ctx.validation, ctx.budget),
                                                    ctx.budget.misses, ctx.ranges, ctx.log)
        f.use(method)
        stages.lap("activation ranges")
        f, full, correction = bias_correction(fmt, ctx, work, f, method, full)
        if correction.get("tried"):
            stages.lap("bias correction")
        chosen, fallback = Search(f, f.candidates(full[0]), ctx.validation, ctx.budget, work, ctx.log).run(full)
        f.finish(chosen, path)
        stages.lap("fallback")
    return {"calibration_images": len(ctx.calibration), "activation_ranges": ranges_record,
            "bias_correction": correction, "fallback": fallback, "stage_seconds": stages, **f.record}


def bias_correction(fmt, ctx, work, f, method, full):
    """(format object, (file, metrics), record): the fully quantized file from the bias-corrected model
    (export/bias_correction.py) where that is closer to the Keras model on validation (meets the budget,
    then a smaller mean probability change), else the plain one. --bias-correction auto tries it only when
    the plain file misses the budget, on tries it always, off never."""
    path, before = full
    missed = ctx.budget.misses(before)
    if ctx.bias_correction == "off" or (ctx.bias_correction == "auto" and not missed):
        return f, full, {"tried": False, "why": "off" if ctx.bias_correction == "off" else "the plain file meets the budget"}
    view = ctx.bias_corrected
    g = fmt(view, work / "bias-corrected")
    g.work.mkdir(exist_ok=True)
    g.calibrate()
    corrected = g.write(method, g.work / f"full{g.suffix}")
    g.use(method)
    after = measure(corrected, ctx.validation, ctx.budget)
    keep = ctx.budget.closeness(after) > ctx.budget.closeness(before)
    ctx.log(f"  bias-corrected: Δtop-1 {after['top1_change_points']:+.1f} pts, agreement {after['agreement']:.3f}"
            f"{decided(after)}, "
            f"mean |Δp| {before['mean_abs_prob_diff']:.4f} -> {after['mean_abs_prob_diff']:.4f}: "
            + ("kept" if keep else "not kept"))
    keys = ("top1_change_points", "agreement", "mean_abs_prob_diff")
    record = {"tried": True, "kept": keep, **view.correction, "shared_stage_seconds": dict(view.timings),
              "validation_plain": {k: before[k] for k in keys}, "validation_corrected": {k: after[k] for k in keys}}
    return (g, (corrected, after), record) if keep else (f, full, record)
