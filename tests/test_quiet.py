"""Upstream deprecation notices pass once per process; everything else passes unchanged."""

from __future__ import annotations

import io
import logging

from find_jax.envs.quiet import OncePerMessage, quiet_upstream_deprecations

NOTICE = "Flax classes are deprecated and will be removed in Diffusers v0.40.0. We recommend migrating ..."


def _record(message: str) -> logging.LogRecord:
    return logging.LogRecord("diffusers.models.attention_flax", logging.WARNING, __file__, 1, message, None, None)


def test_a_repeated_notice_passes_once_and_other_records_always():
    f = OncePerMessage()
    assert f.filter(_record(NOTICE)) and not f.filter(_record(NOTICE)) and not f.filter(_record(NOTICE))
    other = "unet/config.json has an unexpected key"
    assert f.filter(_record(other)) and f.filter(_record(other))  # not a repeated notice: never dropped
    tf = "TensorFlow and JAX classes are deprecated and will be removed in Transformers v5."
    assert f.filter(_record(tf)) and not f.filter(_record(tf))


def test_the_filter_sits_on_both_library_handlers_once():
    quiet_upstream_deprecations()
    quiet_upstream_deprecations()  # idempotent
    for name in ("diffusers", "transformers"):
        handlers = logging.getLogger(name).handlers
        assert handlers, f"{name} has no library handler"
        for h in handlers:
            assert sum(isinstance(f, OncePerMessage) for f in h.filters) == 1
    # What the library handler writes (its stream swapped for the test: other tests may change levels/streams).
    handler = logging.getLogger("diffusers").handlers[0]
    stream = io.StringIO()
    before = handler.setStream(stream)
    try:
        unique = NOTICE + " (test)"
        for _ in range(3):
            handler.handle(_record(unique))
        handler.handle(_record("a different warning"))
    finally:
        handler.setStream(before)
    written = stream.getvalue()
    assert written.count(unique) == 1 and "a different warning" in written
