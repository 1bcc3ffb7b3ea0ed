"""structlog, configured in one place: JSON lines when not on a terminal (journald), readable on one.

Rules of this module:
- One event per line. The time is ISO 8601 with the +08:00 offset, in milliseconds (node/core/times.py:
  the same convention as `fednode status` and the alerts).
- Under systemd (``JOURNAL_STREAM`` names this very stream's device:inode, sd-daemon(3)) each line
  starts with its syslog priority, ``<3>`` error … ``<7>`` debug, which journald takes off and keeps
  as the entry's priority: `journalctl -u fednode -p warning` then shows warnings and errors only, and
  the JSON after the prefix is unchanged. Redirected to a file, no prefix.
- Python's own ``logging`` (APScheduler, Alembic, grpc's Python part) goes through the same renderer,
  so every line of the stream is one of ours.
- gRPC's C-core writes to file descriptor 2 by itself, in glog format; node/__init__.py sets
  ``GRPC_VERBOSITY=ERROR`` before grpc is imported (unless the environment sets it), so nothing but its
  errors can reach the stream. To debug gRPC: ``GRPC_VERBOSITY=DEBUG GRPC_TRACE=api fednode run DIR``.
- Files: under systemd the journal keeps and rotates the log. A node run by hand writes to
  ``node.log`` by redirection (deploy/examples/xuzhou/tree.sh, bench/demo.py append to it);
  deploy/logrotate/fednode rotates it (copytruncate: the writer keeps its descriptor).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog
from structlog.types import EventDict

from node.core.times import now_iso

# syslog priorities (sd-daemon(3)) by structlog level name
PRIORITY = {"critical": 2, "exception": 3, "error": 3, "warning": 4, "warn": 4, "info": 6, "debug": 7}


def add_timestamp(_logger: Any, _name: str, event_dict: EventDict) -> EventDict:
    event_dict["timestamp"] = now_iso()
    return event_dict


class JournalPriority:
    """Wraps the renderer: ``<N>`` before each line, N the syslog priority of the event's level."""

    def __init__(self, renderer: Any) -> None:
        self.renderer = renderer

    def __call__(self, logger: Any, name: str, event_dict: EventDict) -> str:
        prio = PRIORITY.get(str(event_dict.get("level", name)).lower(), 6)
        return f"<{prio}>{self.renderer(logger, name, event_dict)}"


def to_journal(stream: Any) -> bool:
    """Whether ``stream`` is the journal stream systemd connected (JOURNAL_STREAM=DEV:INODE of it)."""
    want = os.environ.get("JOURNAL_STREAM", "")
    if not want:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return f"{st.st_dev}:{st.st_ino}" == want


def configure(level: str = "info", fmt: str = "auto", stream: object = None) -> None:
    out: Any = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if getattr(out, "isatty", lambda: False)() else "json"
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False) if fmt == "console" else structlog.processors.JSONRenderer(ensure_ascii=False)
    )
    if to_journal(out):
        renderer = JournalPriority(renderer)
    threshold = getattr(logging, level.upper(), logging.INFO)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            add_timestamp,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    # the standard library's loggers: the same lines on the same stream
    handler = logging.StreamHandler(out)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name, add_timestamp],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer],
    ))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_fednode", False)]:
        root.removeHandler(old)
    handler._fednode = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(threshold)
