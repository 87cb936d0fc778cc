"""Progress bars for long work: tqdm bars on stderr, shown only where the user asked for progress.

Loops that can take minutes (calibration feeds, the analysis's evaluations and distributions, the
kernel check, the passes of a pipeline) show a tqdm bar with a count and an estimate of the time left.

* **Only when asked.** Library calls print nothing: bars are enabled inside :func:`bars` (``qcompiler
  analyze`` enables them unless ``-q``), and during each pass of a pipeline whose
  :class:`~qcompiler.instruments.Progress` instrument writes to a terminal (``compile`` and
  ``optimize`` without ``-q``). :func:`bar` returns a disabled tqdm (its calls cost nothing) elsewhere.
* **Only for long work.** A bar appears after :data:`DELAY` seconds, so short loops print nothing,
  and it is cleared when it closes: what stays on the screen are the commands' own lines.
* **Logs stay readable.** A bar on a stream that is not a terminal (a CI log, a test capturing
  stderr) follows tqdm's defaults there, after the same delay; the Progress instrument writes its
  one line per pass there, as before, and enables no bars inside the pass, so they never break
  into its lines.

The code that loops takes a library-neutral callback ``progress(done, total)`` (``collect``,
``tensor_distributions``, ``compare_layers``); :func:`advance` turns a bar into one.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from tqdm import tqdm

DELAY = 2.0
"""Seconds a bar waits before it appears: work shorter than that shows no bar."""

_ENABLED: contextvars.ContextVar[bool] = contextvars.ContextVar("qcompiler_progress_bars", default=False)


@contextlib.contextmanager
def bars(on: bool = True) -> Iterator[None]:
    """Within the block, :func:`bar` makes visible bars (``on``) or disabled ones (``not on``)."""
    token = _ENABLED.set(on)
    try:
        yield
    finally:
        _ENABLED.reset(token)


def enabled() -> bool:
    """Whether :func:`bar` makes visible bars here (see :func:`bars`)."""
    return _ENABLED.get()


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def bar(total: int | None, desc: str, unit: str = "it", *, stream: TextIO | None = None,
        on: bool | None = None) -> tqdm:
    """A tqdm bar on ``stream`` (stderr by default) that appears after :data:`DELAY` seconds and is
    cleared when closed; disabled unless ``on`` (default: :func:`enabled`). Use it as a context
    manager so that an exception closes it too."""
    visible = enabled() if on is None else on
    return tqdm(total=total, desc=desc, unit=unit, file=stream if stream is not None else sys.stderr,
                disable=not visible, delay=DELAY, leave=False, dynamic_ncols=True)


def advance(progress_bar: tqdm) -> Callable[[int, "int | None"], None]:
    """A ``progress(done, total)`` callback that moves ``progress_bar`` to ``done`` of ``total``."""

    def update(done: int, total: int | None) -> None:
        if total is not None and progress_bar.total != total:
            progress_bar.total = total
        progress_bar.update(done - progress_bar.n)

    return update
