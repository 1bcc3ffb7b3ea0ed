"""`fednode metrics` and `fednode health`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from node.app.health import check_health
from node.app.metrics import scrape
from node.features import health, metrics
from node.interfaces.cli.base import command, emit, open_home

# ---- CLI ---------------------------------------------------------------------------------------------


def add_parsers(sub: Any, add: Any) -> None:
    add("metrics", "print the Prometheus metrics (from the running node, or from the store)")
    sp = add("health", "every health check of the node (store, recovery, uplink, services, certificates, disk, gRPC "
             "health, /healthz); exit 1 if unhealthy, 0 with a warning if degraded")
    sp.add_argument("--timeout", type=float, default=5.0, help="seconds per probe (default 5)")
    sp.add_argument("--wait", type=float, default=0.0, metavar="S",
                    help="wait up to S seconds for the node to be healthy (exit 0 as soon as it is, 1 if not by then)")


@command("metrics")
def cmd_metrics(args: argparse.Namespace) -> int:
    text, running = scrape(open_home(args))
    if args.json:
        samples = [{"name": n, "labels": dict(sorted(lab)), "value": v}
                   for (n, lab), v in metrics.parse_exposition(text).items()]
        print(json.dumps({"running": running, "samples": samples}, ensure_ascii=False, indent=2))
    else:
        print(text, end="")
    return 0


_LABEL = {health.OK: "ok", health.OFF: "off", health.DEGRADED: "DEGRADED", health.UNHEALTHY: "UNHEALTHY"}


@command("health")
def cmd_health(args: argparse.Namespace) -> int:
    home = open_home(args)
    data = check_health(home, args.timeout, args.wait)
    state, checks = data["state"], data["checks"]
    emit(args, data, lambda: "\n".join(
        [f"{home.code}: {'UNHEALTHY' if state == 'unhealthy' else state}"]
        + [f"  {_LABEL.get(c['state'], c['state']):<9} {name}: {c['detail']}" for name, c in checks.items()]))
    if state == "degraded":
        print(f"warning: {home.code} is {health.summary(state, checks)}", file=sys.stderr)
    return 0 if data["healthy"] else 1
