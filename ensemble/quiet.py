"""Keep TensorFlow's native start-up chatter off the terminal (``--debug`` shows it).

TensorFlow 2.21 logs through absl from C++ ("WARNING: All log messages before
absl::InitializeLog() is called...", "oneDNN custom operations are on...", CPU feature notes),
and ``TF_CPP_MIN_LOG_LEVEL`` no longer silences those lines. :func:`filter_native_logs` puts a
pipe in place of file descriptor 2 and forwards every line except absl-formatted ones. Child
processes inherit the pipe, so trial workers are filtered by their parent.
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import threading

NOISE = re.compile(
    rb"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w./-]+:\d+\] "
    rb"|To enable the following instructions: .*(rebuild TensorFlow|compiler flags))"
)
_state: dict[str, object] = {}


def is_noise(line: bytes) -> bool:
    """A line of native start-up chatter (absl-formatted, or the CPU-instructions note)."""
    return bool(NOISE.match(line))


def _pump(src: int, dst: int) -> None:
    buf = b""
    with os.fdopen(src, "rb", buffering=0) as pipe:
        for chunk in iter(lambda: pipe.read(65536), b""):
            buf += chunk
            *lines, buf = buf.split(b"\n")
            out = b"".join(line + b"\n" for line in lines if not is_noise(line))
            if out:
                os.write(dst, out)
    if buf and not is_noise(buf):
        os.write(dst, buf)


def filter_native_logs() -> None:
    """Filter fd 2 of this process (and of children that inherit it) for the rest of its life."""
    if _state or os.environ.get("ENSEMBLE_NATIVE_LOGS") == "1":
        return
    sys.stderr.flush()
    real = os.dup(2)
    r, w = os.pipe()
    os.dup2(w, 2)
    os.close(w)
    thread = threading.Thread(target=_pump, args=(r, real), daemon=True, name="native-log-filter")
    thread.start()
    _state.update(real=real, thread=thread)
    atexit.register(_restore)


def _restore() -> None:
    """At exit: give fd 2 back and let the filter forward what is still in the pipe."""
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    real = _state.get("real")
    if isinstance(real, int):
        os.dup2(real, 2)  # closes this process's write end of the pipe
        thread = _state.get("thread")
        if isinstance(thread, threading.Thread):
            thread.join(timeout=1.0)
