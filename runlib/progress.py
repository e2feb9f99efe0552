"""What a long stage says while it works: log lines, counts with an estimate of the time left, and a
heartbeat through single steps that cannot count (a conversion, a trace).

On a terminal a count or heartbeat rewrites one line in place; elsewhere (a log file, CI) it prints a
plain line when the count moves on, at most every few seconds. `edgeclf -q` keeps only warnings and
errors; `-v` adds detail.
"""
import os
import sys
import threading
import time

QUIET, NORMAL, VERBOSE = 0, 1, 2
_level = int(os.environ.get("EDGECLF_VERBOSITY", NORMAL))  # worker processes inherit it
PLAIN_EVERY = 10.0  # seconds between plain progress lines when not on a terminal


def set_verbosity(level):
    """QUIET, NORMAL or VERBOSE for this process and the workers it starts; VERBOSE also lets TensorFlow's
    own log lines through (set before TensorFlow loads)."""
    global _level
    _level = level
    os.environ["EDGECLF_VERBOSITY"] = str(level)
    if level >= VERBOSE:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"


def verbosity():
    return _level


def _tty():
    return sys.stdout.isatty()


class _Line:
    """The one in-place line on a terminal: a log line printed meanwhile clears it first."""
    lock = threading.Lock()
    shown = False

    @classmethod
    def write(cls, text, final=False):
        with cls.lock:
            sys.stdout.write("\r\033[K" + text + ("\n" if final else ""))
            sys.stdout.flush()
            cls.shown = not final

    @classmethod
    def clear(cls):
        with cls.lock:
            if cls.shown:
                sys.stdout.write("\r\033[K")
                cls.shown = False


def logger(stage):
    """log(msg, level=NORMAL) for one stage: '[stage] msg'. Warnings (level QUIET, or a message that starts
    with WARNING) always show."""
    def log(msg, level=NORMAL):
        if level <= _level or msg.lstrip().startswith("WARNING"):
            _Line.clear()
            print(f"[{stage}] {msg}", flush=True)
    return log


def duration(seconds):
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    m, s = divmod(seconds, 60)
    return f"{m} min {s:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


class Progress:
    """Counts of `total` items with the time left estimated from the rate so far:

        p = Progress("benchmark", 9, "models")
        p.update(3, "tflite-int8")     # [benchmark] 3/9 models, 1 min 02 s, about 2 min 05 s left: tflite-int8
    """

    def __init__(self, stage, total, unit=""):
        self.stage, self.total, self.unit = stage, max(1, int(total)), unit
        self.start, self.done, self.last_plain = time.monotonic(), 0, 0.0

    def text(self, note=""):
        elapsed = time.monotonic() - self.start
        left = (f", about {duration(elapsed / self.done * (self.total - self.done))} left"
                if 0 < self.done < self.total else "")
        return (f"[{self.stage}] {self.done}/{self.total}{' ' + self.unit if self.unit else ''}, {duration(elapsed)}"
                f"{left}{': ' + note if note else ''}")

    def update(self, done, note=""):
        self.done = done
        if _level < NORMAL:
            return
        now = time.monotonic()
        if _tty():
            _Line.write(self.text(note), final=done >= self.total)
        elif done >= self.total or now - self.last_plain >= PLAIN_EVERY:
            self.last_plain = now
            print(self.text(note), flush=True)


class heartbeat:
    """Say that a single long step is still going: `with heartbeat("export", "tf2onnx conversion"):`."""

    def __init__(self, stage, what, every=None):
        self.stage, self.what = stage, what
        self.every = every or (1.0 if _tty() else 15.0)
        self.stop = threading.Event()

    def __enter__(self):
        self.start = time.monotonic()
        if _level >= NORMAL:
            self.thread = threading.Thread(target=self._beat, daemon=True)
            self.thread.start()
        return self

    def _beat(self):
        while not self.stop.wait(self.every):
            text = f"[{self.stage}] {self.what}: {duration(time.monotonic() - self.start)} so far"
            if _tty():
                _Line.write(text)
            else:
                print(text, flush=True)

    def __exit__(self, *exc):
        self.stop.set()
        if _level >= NORMAL:
            self.thread.join()
            if _tty():
                _Line.clear()
        return False
