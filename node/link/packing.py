"""Compression of batches on a link (proto ``PackedBatch``), negotiated in Hello.

Rules of this module:
- only the batch frame is compressed: the serialised ``Batch`` goes through the codec whole, and the
  receiver decodes it back to the very same bytes before anything is verified, so a record's body and
  signature are checked over the exact bytes their origin signed (nothing is re-serialised);
- the child offers the codecs it decodes (``Hello.compressions``), the parent picks one
  (``Hello.compression``) and both sides use it for every batch of that link; a peer that sends no
  offer (one that predates the field, or ``[link] compression = "none"``) gets plain ``batch`` messages;
- decoding is bounded: a packed batch that says it decodes to more than the receiver's limit, or whose
  frame decodes to more (or fewer) bytes than it says, is refused with ``PackRefused`` before more than
  ``size + 1`` bytes are ever produced (a decompression bomb costs the receiver nothing).
"""

from __future__ import annotations

from collections.abc import Iterable

import zstandard

from proto.fednode.v1 import fednode_pb2 as pb

ZSTD = "zstd"
CODECS = (ZSTD,)  # what this build decodes, preferred first
# zstd level 3 (zstd's default): a 4,000-record batch of case events to ~0.1x in a few ms; higher levels
# gain a few percent for several times the CPU
ZSTD_LEVEL = 3
# below this many serialised bytes a batch goes plain: a frame's overhead is not worth it
MIN_PACK_BYTES = 512


class PackRefused(ValueError):
    """A packed batch this node will not decode (over the limit, lying about its size, not a frame of
    the codec the link chose). The link is ended; the message names what was wrong."""


def offered(setting: str) -> list[str]:
    """What this node offers in its Hello for ``[link] compression``."""
    return [] if setting == "none" else list(CODECS)


def choose(offers: Iterable[str], setting: str) -> str:
    """(Parent.) The codec for a link: ours first, among what the child offers; "" for none."""
    theirs = set(offers)
    return next((c for c in offered(setting) if c in theirs), "")


def pack(batch: pb.Batch, codec: str) -> pb.LinkMessage:
    """The message that carries ``batch`` on a link using ``codec`` ("" or a tiny batch: plain)."""
    packed = packed_batch(batch, codec)
    return pb.LinkMessage(batch=batch) if packed is None else pb.LinkMessage(packed=packed)


def packed_batch(batch: pb.Batch, codec: str) -> pb.PackedBatch | None:
    """``batch`` packed with ``codec``, or None when it travels plain ("" or a tiny batch). A link sends
    ``LinkMessage(packed=...)``, or else the message whose ``batch`` it read the records into (building
    ``LinkMessage(batch=batch)`` would copy every record)."""
    if not codec:
        return None
    raw = batch.SerializeToString()
    if len(raw) < MIN_PACK_BYTES:
        return None
    if codec != ZSTD:
        raise ValueError(f"unknown codec {codec!r}")
    data = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(raw)
    return pb.PackedBatch(codec=codec, size=len(raw), data=data)


def check(packed: pb.PackedBatch, codec: str, limit: int) -> None:
    """Refuse what must not even be decoded: another codec than the link's, a size over ``limit``."""
    if not codec:
        raise PackRefused(f"a packed batch ({packed.codec or 'no codec'}) on a link that chose no compression")
    if packed.codec != codec:
        raise PackRefused(f"a batch packed with {packed.codec!r} on a link that chose {codec!r}")
    if packed.size > limit:
        raise PackRefused(f"a packed batch that decodes to {packed.size:,} bytes, over the limit of {limit:,}")


def unpack(packed: pb.PackedBatch, codec: str, limit: int) -> pb.Batch:
    """The batch inside ``packed``, decoded to at most ``min(size, limit)`` bytes; ``PackRefused`` for a
    frame that is not what it claims (a bomb, a truncated or corrupt frame)."""
    check(packed, codec, limit)
    size = int(packed.size)
    data = bytes(packed.data)
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError as e:
        raise PackRefused(f"a packed batch that is not a zstd frame ({e})") from None
    if declared not in (-1, size):  # -1: the frame does not say
        raise PackRefused(f"a packed batch whose frame decodes to {declared:,} bytes, not the {size:,} it says")
    chunks: list[bytes] = []
    got = 0
    try:
        with zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=False) as r:
            while got <= size:
                chunk = r.read(size + 1 - got)
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
    except zstandard.ZstdError as e:
        raise PackRefused(f"a packed batch whose frame does not decode ({e})") from None
    if got != size:
        more = "more than" if got > size else "only"
        raise PackRefused(f"a packed batch whose frame decodes to {more} {got:,} bytes, not the {size:,} it says")
    raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    try:
        return pb.Batch.FromString(raw)
    except Exception as e:  # protobuf's DecodeError
        raise PackRefused(f"a packed batch that decodes to no Batch ({e})") from None
