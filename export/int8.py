"""The one int8 driver: calibrate, observe, choose activation ranges, quantize, keep ops float where the
parity budget needs it. Both formats plug in (tflite_convert.TFLiteInt8, onnx_convert.OnnxInt8) with:

    suffix                 the file extension
    calibrate()            calibrate once and observe every activation on the calibration images
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
from train.shared.scratch import prefix

from .fallback import Search, measure
from .stages import Stages


def export_int8(fmt, ctx, path):
    """Write the int8 file of format class `fmt` to `path`; returns its manifest fields."""
    stages = Stages()
    with tempfile.TemporaryDirectory(prefix=prefix(f"int8-{fmt.__name__}")) as work:
        work = Path(work)
        f = fmt(ctx, work)
        f.calibrate()
        stages.lap("calibration")

        def write(method):
            return f.write(method, work / f"ranges-{method.replace('@', '-from-')}{f.suffix}")

        method, ranges_record, full = ranges.choose(write, lambda p: measure(p, ctx.validation), ctx.budget.misses,
                                                    ctx.ranges, ctx.log)
        f.use(method)
        stages.lap("activation ranges")
        search = Search(f.quantize, f.candidates(full[0]), ctx.validation, ctx.budget, work, ctx.log, f.suffix,
                        compact=f.compact)
        chosen, fallback = search.run(full)
        f.finish(chosen, path)
        stages.lap("fallback")
    return {"calibration_images": len(ctx.calibration), "activation_ranges": ranges_record, "fallback": fallback,
            "stage_seconds": stages, **f.record}
