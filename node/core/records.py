"""Record bodies: build them once, parse them, and say which channel a kind travels on.

Rules of this module:
- ``build_body`` is the only place a RecordBody is serialised; the bytes it returns are what is
  hashed, signed, sent and stored. Nothing re-serialises a parsed body.
- Channels are small ints in the store and on the wire (``CONTROL=1 < MONITOR=2 < BULK=3``); a
  lower number is a higher priority.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from node.core.errors import MalformedRecord, UsageError
from proto.fednode.v1 import fednode_pb2 as pb

CONTROL, MONITOR, BULK = 1, 2, 3
CHANNELS = {"control": CONTROL, "monitor": MONITOR, "bulk": BULK}
CHANNEL_NAMES = {v: k for k, v in CHANNELS.items()}
SIGNED_CHANNELS = frozenset({CONTROL, MONITOR})  # records on these carry their own signature

_CONTROL_PREFIXES = ("ticket.", "key.", "link.", "audit.", "node.")
_MONITOR_PREFIXES = ("alert", "anomaly", "risk.", "complaint.", "incident.")


def channel_of_kind(kind: str) -> int:
    if kind.startswith(_CONTROL_PREFIXES):
        return CONTROL
    if kind.startswith(_MONITOR_PREFIXES):
        return MONITOR
    return BULK


def channel_number(name: str | int) -> int:
    if isinstance(name, int):
        if name in CHANNEL_NAMES:
            return name
    elif name.lower() in CHANNELS:
        return CHANNELS[name.lower()]
    raise UsageError(f"unknown channel {name!r}", fix="use one of: control, monitor, bulk")


def channel_name(number: int) -> str:
    return CHANNEL_NAMES.get(number, str(number))


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True, slots=True)
class Body:
    """A parsed record body (read-only view; the bytes stay the reference)."""

    origin: str
    channel: int
    seq: int
    kind: str
    dest: str
    time_us: int
    payload: bytes

    def payload_json(self) -> Any:
        return json.loads(self.payload) if self.payload else None


def build_body(
    *, origin: str, channel: int, seq: int, kind: str, payload: bytes, dest: str = "", time_us: int = 0
) -> bytes:
    return pb.RecordBody(
        origin=origin,
        channel=channel,  # type: ignore[arg-type]
        seq=seq,
        kind=kind,
        dest=dest,
        time_us=time_us or now_us(),
        payload=payload,
    ).SerializeToString()


def parse_body(body: bytes, *, origin: str = "", channel: str = "", seq: int = 0) -> Body:
    try:
        m = pb.RecordBody.FromString(body)
    except DecodeError as e:
        raise MalformedRecord(
            f"record body is not a valid RecordBody ({e})",
            origin=origin,
            channel=channel,
            seq=seq,
            fix="the sender's store is damaged or the data was altered in transit; run `fednode verify` there",
        ) from None
    return Body(m.origin, int(m.channel), m.seq, m.kind, m.dest, m.time_us, m.payload)


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))  # one, not one per call


def encode_payload(obj: Any) -> bytes:
    """Domain objects travel as compact UTF-8 JSON. The bytes are stored as signed, never re-encoded, so
    they need not be canonical."""
    return _ENCODER.encode(obj).encode("utf-8")
