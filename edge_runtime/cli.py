"""The device's command line: python -m edge_runtime (or edgeclf-runtime) COMMAND ...

    selfcheck   does this machine reproduce the build machine's outputs? (run it first)
    select      time every candidate file here and keep the fastest for predict, serve and watch
    predict     classify files, folders and globs, one line per image as it goes
    serve       an HTTP service (Starlette on Uvicorn), bounded, with Prometheus metrics
    watch       classify each image that lands in a folder, once
    info        describe a model file or a bundle

Without --model, commands run the bundle in --bundle (default: the current folder): the file `select`
chose on this machine, or the bundle's first candidate before that.
"""
import argparse
import json
import os
import sys

from .errors import InputError, exit_code, printable, tolerant_output

MODEL_SUFFIXES = (".tflite", ".onnx")
EXAMPLES = {
    "selfcheck": "python -m edge_runtime selfcheck                      # in the unpacked bundle",
    "select": "python -m edge_runtime select --max-seconds 10",
    "predict": ("python -m edge_runtime predict photos/ 'trap/*.jpg' --json > out.jsonl\n"
                "  python -m edge_runtime predict --model model-int8.tflite photo.jpg --top-k 3"),
    "serve": ("python -m edge_runtime serve --port 8080\n"
              "  curl -s -H 'Content-Type: image/jpeg' --data-binary @photo.jpg localhost:8080/v1/classify\n"
              "  curl -s -F image=@photo.jpg 'localhost:8080/v1/classify?top_k=3'"),
    "watch": "python -m edge_runtime watch /srv/camera-trap          # appends to classifications.jsonl there",
    "info": "python -m edge_runtime info                           # the bundle, its candidates and selection",
}


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


def _model_options(p, threads=True):
    p.add_argument("--model", help="a .tflite or .onnx file (labels.txt and manifest.json beside it are used); "
                                   "default: the bundle's selected file")
    p.add_argument("--bundle", default=".", help="the unpacked bundle (default: the current folder)")
    if threads:
        p.add_argument("--threads", type=int, help="inference threads (default: the runtime's choice)")
    p.add_argument("--labels", help="labels file (default: labels.txt beside the model)")
    p.add_argument("--setting", action="append", default=None, metavar="KEY=VALUE",
                   help="runtime setting, e.g. xnnpack=off (TFLite) or graph_optimization=extended (ONNX); default: "
                        "the fastest `make benchmark` measured on this kind of CPU, else the library defaults")
    p.add_argument("--default-settings", action="store_true", help="use the runtime libraries' defaults")


def _sub(sub, name, help):
    return sub.add_parser(name, help=help, description=help, epilog="example:\n  " + EXAMPLES[name],
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def parser(prog="python -m edge_runtime"):
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0] + ".",
                                epilog=__doc__.split("\n\n")[-1], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_commands(p.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return p


def _selfcheck_arguments(sub):
    s = _sub(sub, "selfcheck", "run each shipped file on the reference images and compare with the build machine")
    s.add_argument("--bundle", default=".", help="the unpacked bundle (default: the current folder)")
    s.add_argument("--json", metavar="FILE", help="also write the full result as JSON")
    s.add_argument("--expect", metavar="SHA256", help="the manifest's checksum as printed where the bundle was built: "
                                                      "refuse a bundle whose manifest is another")


def _select_arguments(sub):
    from .timing import DEFAULTS

    s = _sub(sub, "select", "time each candidate on this machine and keep the fastest")
    s.add_argument("--bundle", default=".", help="the unpacked bundle (default: the current folder)")
    s.add_argument("--threads", type=int, help="the 'all cores' thread count (default: the cores this process may use)")
    s.add_argument("--max-seconds", type=float, default=DEFAULTS["max_seconds"],
                   help="longest time per figure (default %(default)s; under emulation a few seconds show it works)")
    s.add_argument("--min-runs", type=int, default=DEFAULTS["min_runs"], help="timed calls at least (default %(default)s)")
    s.add_argument("--ci", type=float, default=DEFAULTS["ci"],
                   help="stop once each p50's 95%% interval is within this fraction of it (default %(default)s)")


def _predict_arguments(sub):
    s = _sub(sub, "predict", "classify images: files, folders (walked) and globs, one line per image as it goes")
    _model_options(s)
    s.add_argument("images", nargs="+", metavar="IMAGE", help="image files, folders or quoted globs")
    s.add_argument("--top-k", type=int, default=5)
    s.add_argument("--json", action="store_true", help="one JSON object per line instead of text")
    s.add_argument("--batch", type=int, default=16, help="images decoded and run at a time (default 16)")


def _serve_arguments(sub):
    from .serve import Limits

    s = _sub(sub, "serve", "serve the classifier over HTTP (binds 127.0.0.1 unless told otherwise)")
    _model_options(s, threads=False)
    d = Limits()
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 for the network)")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--workers", type=int, default=d.workers, help="inference threads, each with its own "
                                                                 "interpreter (default: the cores, %(default)s here)")
    s.add_argument("--threads", type=int, default=d.threads, help="threads per interpreter (default %(default)s)")
    s.add_argument("--queue", type=int, default=d.queue,
                   help="requests waiting for a worker before 503 (default %(default)s)")
    s.add_argument("--max-bytes", type=int, default=d.max_bytes, help="largest request body (default %(default)s)")
    s.add_argument("--timeout", type=float, default=d.timeout,
                   help="seconds per request, body to answer (default %(default)s)")
    s.add_argument("--top-k", type=int, default=d.top_k, help="classes per answer unless ?top_k= (default %(default)s)")
    s.add_argument("--header-timeout", type=float, default=d.header_timeout,
                   help="seconds a connection may take to send a request's headers; idle and slow connections are "
                        "closed after it (default %(default)s)")
    s.add_argument("--max-connections", type=int, default=d.max_connections,
                   help="open connections served fully; beyond, only /health and /metrics answer, others get a JSON 503 "
                        "(default %(default)s)")
    s.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests addressed to this Host name (repeat; '*' for any); the loopback names, "
                        "the bound address and, bound to 0.0.0.0, this machine's name and addresses are answered")
    s.add_argument("--token", default=os.environ.get("EDGECLF_TOKEN"),
                   help="every POST must carry Authorization: Bearer TOKEN (default: $EDGECLF_TOKEN; none). Give one "
                        "whenever the service listens beyond this machine")
    s.add_argument("--access-log", action="store_true", help="log every request")


def _watch_arguments(sub):
    from .watch import OUTPUT

    s = _sub(sub, "watch", "classify each image that lands in a folder, once, appending JSON lines")
    _model_options(s)
    s.add_argument("folder")
    s.add_argument("--out", help=f"JSON-lines file (default FOLDER/{OUTPUT})")
    s.add_argument("--top-k", type=int, default=5)
    s.add_argument("--interval", type=float, default=1.0, help="seconds between looks at the folder (default 1)")
    s.add_argument("--settle", type=float, default=1.0,
                   help="an image is complete once unmodified this many seconds (default 1)")
    s.add_argument("--once", action="store_true", help="classify what is there and stop")
    s.add_argument("--duration", type=float, help="stop after this many seconds")


def _info_arguments(sub):
    s = _sub(sub, "info", "describe a model file, or the bundle and the file it would run")
    _model_options(s)
    s.add_argument("file", nargs="?", help="a model file (same as --model)")


# each device command's arguments, in the order --help lists them
ARGUMENTS = {"selfcheck": _selfcheck_arguments, "select": _select_arguments, "predict": _predict_arguments,
             "serve": _serve_arguments, "watch": _watch_arguments, "info": _info_arguments}


def add_commands(sub):
    """The device's commands, added to an argparse subparsers object (this CLI's, or edgeclf's)."""
    for add in ARGUMENTS.values():
        add(sub)
    for name, handler in COMMANDS.items():
        sub.choices[name].set_defaults(handler=handler)


def _classifier(args, threads=None):
    from .bundle import resolve_model
    from .classifier import Classifier

    settings = {} if args.default_settings else parse_settings(args.setting)
    model = resolve_model(args.model, args.bundle, threads)
    return Classifier(model, labels=args.labels, threads=threads, settings=settings)


def _positive(**values):
    for name, v in values.items():
        if v is not None and v < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {v}")


def cmd_predict(args):
    from .inputs import expand

    _positive(top_k=args.top_k, batch=args.batch, threads=args.threads)
    if not args.model and args.images[0].lower().endswith(MODEL_SUFFIXES):  # predict MODEL IMAGE... (older form)
        args.model, args.images = args.images[0], args.images[1:]
        if not args.images:
            raise InputError("no images given")
    clf = _classifier(args, args.threads)
    failed = total = 0
    for image, top, error in clf.stream(expand(args.images), args.top_k, args.batch):
        total += 1
        failed += error is not None
        if args.json:
            row = {"image": image, "error": error} if error else {"image": image, **top.as_dict(digits=6)}
            print(json.dumps(row), flush=True)
        elif error:
            print(f"error: {printable(error)}", file=sys.stderr, flush=True)
        else:
            scores = ", ".join(f"{l} {p:.3f}" for l, p in top)
            print(f"{printable(image)}: " + (f"unknown (confidence {top.confidence:.3f}; {scores})" if top.unknown
                                             else scores), flush=True)
    if failed:
        if total > 1:
            print(f"error: {failed} of {total} images could not be classified", file=sys.stderr)
        return 2
    if not total:
        raise InputError("no images found in " + ", ".join(args.images))
    return 0


def cmd_selfcheck(args):
    from . import selfcheck
    from .files import write_json

    result = selfcheck.run(args.bundle, expect=args.expect)
    for r in [result["integrity"], *result["results"]]:
        print(r["line"], flush=True)
    if args.json:
        write_json(args.json, result)
    if not result["passed"]:
        if not result["integrity"]["passed"]:
            print("error: the bundle was altered since it was built: it is not run", file=sys.stderr)
            return 1
        print(f"error: {sum(not r['passed'] for r in result['results'])} check(s) failed: this machine does not "
              "reproduce the build machine's outputs", file=sys.stderr)
        return 1
    return 0


def cmd_select(args):
    from .selection import select, table

    _positive(threads=args.threads, min_runs=args.min_runs)
    if args.max_seconds <= 0:
        raise InputError("--max-seconds must be above 0")
    record = select(args.bundle, {"max_seconds": args.max_seconds, "min_runs": args.min_runs, "ci": args.ci},
                    args.threads, log=lambda m: print(m, flush=True))
    print(table(record))
    c = record["choice"]
    print(f"selected: {c['all']} at {record['threads']['all']} threads, {c['1']} at 1 thread "
          f"(CPU flags: {' '.join(record['cpu_flags']) or 'none found'}); written to {args.bundle}/selection.json")
    return 0


def cmd_serve(args):
    from .bundle import resolve_model
    from .serve import Limits, serve

    _positive(workers=args.workers, threads=args.threads, queue=args.queue, max_bytes=args.max_bytes, top_k=args.top_k,
              max_connections=args.max_connections)
    if args.timeout <= 0 or args.header_timeout <= 0:
        raise InputError("--timeout and --header-timeout must be above 0")
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port must be between 0 and 65535, got {args.port}")
    notes: list[str] = []
    model = resolve_model(args.model, args.bundle, args.threads, log=notes.append)
    from .http_guard import LOCAL_NAMES, allowed_hosts

    limits = Limits(max_bytes=args.max_bytes, timeout=args.timeout, queue=args.queue, workers=args.workers,
                    threads=args.threads, top_k=args.top_k, header_timeout=args.header_timeout,
                    max_connections=args.max_connections, hosts=tuple(sorted(allowed_hosts(args.host, args.allow_host))),
                    token=args.token or None)
    if args.host not in LOCAL_NAMES and not limits.token:
        notes.append(f"warning: serving beyond this machine ({args.host}) without --token: anyone who can reach it may "
                     "classify (docs/deploy.md)")
    for n in notes:
        print(n, flush=True)
    serve(model, limits, (args.host, args.port), why=notes[0] if notes else "given with --model",
          access_log=args.access_log, log=lambda m: print(m, flush=True))
    return 0


def cmd_watch(args):
    from pathlib import Path

    from .watch import Watcher

    _positive(top_k=args.top_k, threads=args.threads)
    if not Path(args.folder).is_dir():
        raise InputError(f"{args.folder}: no such folder")
    clf = _classifier(args, args.threads)
    w = Watcher(clf, args.folder, args.out, args.top_k, args.settle, log=lambda m: print(m, flush=True))
    print(f"watching {args.folder} ({len(w.done)} image(s) already in {w.out}); stop with Ctrl-C or SIGTERM", flush=True)
    w.run(args.interval, args.once, args.duration)
    return 0


def cmd_info(args):
    from .bundle import Bundle

    args.model = args.model or args.file
    info = _classifier(args, args.threads).info()
    if not args.model:
        b = Bundle(args.bundle)
        info["bundle"] = {"candidates": b.candidates, "selection": b.selection()}
    print(json.dumps(info, indent=2))
    return 0


COMMANDS = {"predict": cmd_predict, "selfcheck": cmd_selfcheck, "select": cmd_select, "serve": cmd_serve,
            "watch": cmd_watch, "info": cmd_info}


def main(argv=None, prog="python -m edge_runtime"):
    tolerant_output()
    args = parser(prog).parse_args(argv)
    return exit_code(args.handler, args)
