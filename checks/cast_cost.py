"""What the Cast at the front of `onnx-int8` costs: the file against its twin without the Cast (float32 pixels
in), timed call by call interleaved at 1 thread on the same image, with the benchmark's p50 interval rule.

    python -m checks.cast_cost runs/<name>/export/model-int8.onnx [--max-seconds 60]
"""
import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from edge_runtime.errors import InputError, exit_code
from edge_runtime.machine import cpu_flags
from edge_runtime.timing import latency


def without_cast(model):
    """The model with its leading uint8 -> float32 Cast removed and a float32 input in its place."""
    import onnx

    g = model.graph
    (inp,) = g.input
    casts = [n for n in g.node if n.op_type == "Cast" and list(n.input) == [inp.name]]
    if len(casts) != 1:
        raise InputError(f"input {inp.name!r} does not go through one Cast: not an onnx-int8 file with uint8 pixels in")
    (cast,) = casts
    for node in g.node:
        for k, name in enumerate(node.input):
            if name == cast.output[0]:
                node.input[k] = inp.name
    g.node.remove(cast)
    inp.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    return model


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path, help="an onnx-int8 file (uint8 input through a Cast)")
    p.add_argument("--max-seconds", type=float, default=60.0)
    a = p.parse_args(argv)
    return exit_code(_measure, a)


def _measure(a):
    import onnx
    import onnxruntime as ort

    if not a.model.is_file():
        raise InputError(f"{a.model}: no such model file")
    try:
        model = onnx.load(str(a.model))
    except Exception as e:  # noqa: BLE001  a truncated or foreign file
        raise InputError(f"{a.model}: not a readable ONNX model ({type(e).__name__})") from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    with tempfile.TemporaryDirectory() as tmp:
        twin = Path(tmp) / "no-cast.onnx"
        onnx.save(without_cast(model), str(twin))
        cast_s, twin_s = (ort.InferenceSession(str(f), opts, providers=["CPUExecutionProvider"]) for f in (a.model, twin))
        shape = [d if isinstance(d, int) else 1 for d in cast_s.get_inputs()[0].shape]
        pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
        name = cast_s.get_inputs()[0].name
        feeds = ({name: pixels}, {name: pixels.astype(np.float32)})
        same = np.array_equal(cast_s.run(None, feeds[0])[0], twin_s.run(None, feeds[1])[0])
        with_cast, no_cast = latency(lambda i: cast_s.run(None, feeds[0]), lambda i: twin_s.run(None, feeds[1]),
                                     max_seconds=a.max_seconds)
    print(f"{a.model.name}, 1 thread, {with_cast['runs']} interleaved calls each; CPU flags: {' '.join(cpu_flags())}")
    print("| input | p50 ms | 95% CI |\n|---|---|---|")
    for label, r in (("uint8 through the Cast", with_cast), ("float32, Cast removed", no_cast)):
        print(f"| {label} | {r['p50_ms']:.3f} | [{r['p50_ci_ms'][0]:.3f}, {r['p50_ci_ms'][1]:.3f}] |")
    d = with_cast["p50_ms"] - no_cast["p50_ms"]
    print(f"difference {d:+.3f} ms ({d / no_cast['p50_ms']:+.1%}); outputs identical: {same}")


if __name__ == "__main__":
    sys.exit(main())
