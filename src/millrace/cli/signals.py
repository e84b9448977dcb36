"""How ``millrace`` commands end on SIGTERM and Ctrl-C (SIGINT); docs/cli.md states the exit codes.

A command ended by signal N exits with 128 + N (143 for SIGTERM, 130 for SIGINT), whatever it was doing:

- A short command (``topics list``, ``stack up``, ...) is interrupted where it stands: :class:`Terminated`
  unwinds it (``finally`` blocks run).
- A long-running command (simulate, replay, mqtt-bridge, process, serve) wraps its body, start-up included,
  in :func:`stopping`: the first signal sets its stop event, the command finishes its current batch, flushes
  and prints its summary; then the CLI exits 128 + N (:data:`received`). If the clean stop takes longer than
  the command's grace period, or a second signal comes, the process exits at once, also with 128 + N.
- A signal that arrives while the interpreter is still importing, before the CLI runs, ends the process the
  default way (killed by the signal: status 143 / 130 in a shell).

Only a command that ends by itself (its --duration, --count, --until-idle or end of input) exits 0.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)
received: list[int] = []  # signals a long-running command stopped on (the CLI exits 128 + the first)


class Terminated(BaseException):  # noqa: N818 - like KeyboardInterrupt, which it mirrors for SIGTERM
    """Raised in the main thread by SIGTERM outside a long-running command; not an ``Exception`` so broad
    ``except Exception`` clauses do not swallow it."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signum)


def install_default() -> dict[int, object]:
    """SIGTERM raises :class:`Terminated` (SIGINT keeps raising KeyboardInterrupt). Returns the previous
    handlers for :func:`restore`."""
    previous: dict[int, object] = {}
    if threading.current_thread() is threading.main_thread():
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, _raise_terminated)
    return previous


def restore(previous: dict[int, object]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)  # type: ignore[arg-type]


def force_exit(signum: int, message: str) -> None:
    """Leave now: one line on stderr, exit code 128 + ``signum``. ``os._exit`` skips interpreter clean-up,
    which is what hangs (a JVM call that does not return); child JVMs see their stdin close and exit too."""
    try:
        sys.stderr.write(f"error: {message}\n")
        sys.stderr.flush()
    finally:
        os._exit(128 + signum)


@contextlib.contextmanager
def stopping(stop: threading.Event, *, grace_s: float = 30.0, what: str = "the command") -> Iterator[None]:
    """Within the block the first SIGINT/SIGTERM sets ``stop`` and arms a watchdog that force-exits after
    ``grace_s`` seconds; a second signal force-exits at once. The previous handlers come back on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    timers: list[threading.Timer] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            force_exit(signum, f"{name} again: {what} exits without finishing its clean stop")
        stop.set()
        received.append(signum)
        sys.stderr.write(f"{name}: stopping {what} (up to {grace_s:.0f} s; send it again to exit at once)\n")
        sys.stderr.flush()
        timer = threading.Timer(
            grace_s, force_exit, (signum, f"{what} did not stop within {grace_s:.0f} s after {name}; exited")
        )
        timer.daemon = True
        timer.start()
        timers.append(timer)

    previous = {signum: signal.signal(signum, handler) for signum in SIGNALS}
    try:
        yield
    finally:
        for timer in timers:
            timer.cancel()
        restore(previous)  # type: ignore[arg-type]
