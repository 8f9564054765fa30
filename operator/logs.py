"""Logs a person can read: a timestamp, the level, the object's name, and no line per routine event.

kopf logs ``Handler 'x' succeeded.`` at INFO for every event a handler sees (every Node heartbeat);
here those lines are DEBUG, shown only with ``--verbose``/``TESSERA_LOG_LEVEL=DEBUG``.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf


class RoutineSuccesses(logging.Filter):
    """Demotes kopf's per-event ``Handler ... succeeded.`` lines to DEBUG (and drops them unless DEBUG is on)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or not record.name.startswith("kopf"):
            return True
        message = record.getMessage()
        if not (message.startswith("Handler ") and message.endswith(" succeeded.")):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)


class ObjectLog(logging.LoggerAdapter):
    """A logger whose lines start with ``[namespace/name]``, as kopf's own per-object loggers do."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[{self.extra['object']}] {msg}", kwargs


def quiet_routine_successes() -> None:
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RoutineSuccesses) for f in handler.filters):
            handler.addFilter(RoutineSuccesses())


def configure(level: str = "INFO", verbose: bool = False) -> None:
    """kopf's full format (time, logger, level) with the object as a prefix; routine successes at DEBUG."""
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.FULL, log_prefix=True)
    logging.getLogger().setLevel(logging.DEBUG if verbose else level)
    quiet_routine_successes()
