"""Upstream deprecation notices once per process, not once per traced module.

diffusers 0.3x logs "Flax classes are deprecated ..." from the ``setup`` of every Flax module it defines, and
transformers 4.x logs "TensorFlow and JAX classes are deprecated ..." per model: a sampler trace prints the same
line dozens of times, burying the lines a run prints itself (measured: 97 of the 119 lines of a
``measure_shapes.py`` log; 3 with the filter, two of them printed at import, before it is installed).
:func:`quiet_upstream_deprecations` adds a filter to the two libraries' own log handlers that lets each such
notice through the first time only; every other record passes unchanged.
"""

from __future__ import annotations

import logging

# Start of the notices that are repeated per module (diffusers' Flax classes, transformers' TF/JAX classes).
REPEATED_NOTICES = ("Flax classes are deprecated", "TensorFlow and JAX classes are deprecated")


class OncePerMessage(logging.Filter):
    """Passes a record whose message starts with one of ``prefixes`` only the first time that message is seen."""

    def __init__(self, prefixes: tuple[str, ...] = REPEATED_NOTICES):
        super().__init__()
        self.prefixes = prefixes
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith(self.prefixes):
            return True
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


def quiet_upstream_deprecations() -> None:
    """Installs :class:`OncePerMessage` on the diffusers and transformers library handlers (idempotent)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        name = library.__name__.split(".")[0]
        for handler in library.get_logger(name).handlers:  # get_logger sets up the library's root handler
            if not any(isinstance(f, OncePerMessage) for f in handler.filters):
                handler.addFilter(OncePerMessage())
