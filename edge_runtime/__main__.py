"""python -m edge_runtime predict MODEL IMAGE... | info MODEL"""
import argparse
import json
import sys

from .errors import InputError, exit_code


def parse_settings(items):
    """['xnnpack=off', ...] -> {'xnnpack': False, ...}; None when none given."""
    if not items:
        return None
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--setting must be KEY=VALUE, got {item!r}")
        v = value.strip().lower()
        out[key.strip()] = True if v in ("on", "true", "1") else False if v in ("off", "false", "0") else v
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m edge_runtime", description="Classify images with an exported model.")
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("predict", help="classify images")
    pr.add_argument("model", help=".tflite or .onnx file (labels.txt and manifest.json beside it are used)")
    pr.add_argument("images", nargs="+")
    pr.add_argument("--top-k", type=int, default=5)
    pr.add_argument("--json", action="store_true", help="print JSON instead of text")
    pr.add_argument("--threads", type=int, default=None)
    pr.add_argument("--labels", help="labels file (default: labels.txt beside the model)")
    pr.add_argument("--setting", action="append", default=None, metavar="KEY=VALUE",
                    help="runtime setting, e.g. xnnpack=off (TFLite) or graph_optimization=extended (ONNX); "
                         "default: the fastest `make benchmark` measured on this kind of CPU")
    pr.add_argument("--default-settings", action="store_true", help="use the runtime libraries' defaults")
    inf = sub.add_parser("info", help="describe a model")
    inf.add_argument("model")
    inf.add_argument("--labels")
    args = p.parse_args(argv)

    def body():
        from .classifier import Classifier

        if args.command == "predict" and args.top_k < 1:
            raise InputError(f"--top-k must be at least 1, got {args.top_k}")
        settings = {} if getattr(args, "default_settings", False) else parse_settings(getattr(args, "setting", None))
        clf = Classifier(args.model, labels=args.labels, threads=getattr(args, "threads", None), settings=settings)
        if args.command == "info":
            print(json.dumps(clf.info(), indent=2))
            return 0
        results = clf.predict(list(args.images), top_k=args.top_k)
        if args.json:
            print(json.dumps([{"image": img, "top_k": [{"label": l, "probability": round(pr_, 6)} for l, pr_ in r]}
                              for img, r in zip(args.images, results)], indent=2))
        else:
            for img, r in zip(args.images, results):
                print(f"{img}: " + ", ".join(f"{l} {pr_:.3f}" for l, pr_ in r))
        return 0

    return exit_code(body)


if __name__ == "__main__":
    sys.exit(main())
