"""The health checks a node can be judged by without running it, and how checks add up to the node's state.

Rules of this module:
- A check is ``ok``, ``off`` (switched off by configuration: shown, never counted), ``degraded`` or
  ``unhealthy``; the node is the worst of its checks (``worst``): healthy, degraded or unhealthy.
- Here: the states, ``Check``, the certificate and disk judgements (pure: they take what they judge and
  ``now``) and ``offline_checks`` (certificates and disk of a home, running or not). The checks that need
  the running node (store thread, recovery, uplink, services) and HealthMonitor are node/runtime/health.py.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptography import x509

    from node.core.home import Home

OK, OFF, DEGRADED, UNHEALTHY = "ok", "off", "degraded", "unhealthy"
_RANK = {OK: 0, OFF: 0, DEGRADED: 1, UNHEALTHY: 2}
NODE_STATES = ("healthy", "degraded", "unhealthy")

CERT_WARN_DAYS = 30
CERTIFICATES = ("tls.crt", "sign.crt", "ca.crt", "root.crt")
DISK_UNHEALTHY_BYTES = 100 * 2**20  # SQLite needs room for its WAL and checkpoints
DISK_DEGRADED_BYTES = 2**30


@dataclass(frozen=True)
class Check:
    name: str
    state: str  # ok | off | degraded | unhealthy
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "ok": _RANK[self.state] == 0, "detail": self.detail}


def worst(states: Iterable[str]) -> str:
    """The node's state from its checks' states: healthy, degraded or unhealthy."""
    rank = max((_RANK[s] for s in states), default=0)
    return NODE_STATES[rank]


def summary(state: str, checks: Mapping[str, Mapping[str, Any]]) -> str:
    """One line: the state and the checks that make it (for STATUS=, /healthz, warnings)."""
    bad = [f"{name}: {c['detail']}" for name, c in checks.items() if _RANK.get(c["state"], 0) > 0]
    return state + (": " + "; ".join(bad) if bad else "")


def certificate_checks(certs: Mapping[str, x509.Certificate], now: dt.datetime,
                       warn_days: float = CERT_WARN_DAYS) -> list[Check]:
    out = []
    for name, cert in certs.items():
        end, start = cert.not_valid_after_utc, cert.not_valid_before_utc
        left_days = (end - now).total_seconds() / 86400
        when = end.astimezone().isoformat(timespec="seconds")
        if now < start:
            out.append(Check(f"cert:{name}", UNHEALTHY, f"not valid before {start.astimezone().isoformat(timespec='seconds')}"
                             " (is this server's clock right?)"))
        elif left_days <= 0:
            out.append(Check(f"cert:{name}", UNHEALTHY, f"expired {when}: renew it (`fednode pki rotate`, or re-enrol)"))
        elif left_days < warn_days:
            out.append(Check(f"cert:{name}", DEGRADED, f"expires {when}, in {left_days:.0f} days: renew it before"))
        else:
            out.append(Check(f"cert:{name}", OK, f"valid until {when}"))
    return out


def disk_judgement(path: Path | str, free: int, unhealthy_bytes: int = DISK_UNHEALTHY_BYTES,
                   degraded_bytes: int = DISK_DEGRADED_BYTES) -> Check:
    text = f"{free / 2**30:.1f} GiB free on the filesystem of {path}"
    if free < unhealthy_bytes:
        return Check("disk", UNHEALTHY, f"{text} (below {unhealthy_bytes // 2**20} MiB: writes will fail)")
    if free < degraded_bytes:
        return Check("disk", DEGRADED, f"{text} (below {degraded_bytes // 2**20} MiB)")
    return Check("disk", OK, text)


def load_certificates(home: Home) -> dict[str, x509.Certificate]:
    out = {}
    for name in CERTIFICATES:
        if home.has(name):
            out[name] = home.load_cert(name)
    return out


def store_dir(home: Home) -> Path:
    from node.core.home import sqlite_path

    db = sqlite_path(home.config.store_url, home.dir)
    return db.parent if db is not None else home.dir


def disk_check(home: Home) -> Check:
    where = store_dir(home)
    try:
        free = shutil.disk_usage(where).free
    except OSError as e:
        return Check("disk", UNHEALTHY, f"cannot read the free space of {where}: {e.strerror or e}")
    return disk_judgement(where, free)


def offline_checks(home: Home, now: dt.datetime | None = None) -> list[Check]:
    """What can be judged of a stopped node: its certificates and its disk."""
    return [*certificate_checks(load_certificates(home), now or dt.datetime.now(dt.UTC)), disk_check(home)]
