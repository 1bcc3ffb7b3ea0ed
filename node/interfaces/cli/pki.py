"""`fednode pki install|rotate|revoke|keys`: parse, call node.app.keys, render."""

from __future__ import annotations

import argparse
from pathlib import Path

from node.app.keys import install_bundle, list_keys, revoke_key, rotate_key
from node.core.errors import UsageError
from node.interfaces.cli.base import command, emit, open_home

# ---- CLI ---------------------------------------------------------------------------------------------------


@command("pki install")
def cmd_pki_install(args: argparse.Namespace) -> int:
    home = open_home(args)
    try:
        text = Path(args.bundle).read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot read the bundle {args.bundle}: {e.strerror}",
                         fix="pass the file the parent's `fednode pki sign` printed") from None
    data = install_bundle(home, text, args.bundle)
    note = ""
    if data["via"] == "admin" and (data["changed"] or data["parent_changed"]):
        note = ("\nthe node runs: the signing key is in use now; the new TLS certificates and parent are used from the "
                "next start (`systemctl restart fednode`)")
    emit(args, data, f"installed certificates for {data['path']}; parent {data['parent_code'] or '-'}; "
         f"signing key {data['key_id']}\nbundle fingerprint {data['bundle_fingerprint']} (the parent's `pki sign` "
         f"printed the same){note}")
    return 0


@command("pki rotate")
def cmd_pki_rotate(args: argparse.Namespace) -> int:
    data = rotate_key(open_home(args))
    rec = data.get("recovery") or {}
    extra = ""
    if rec.get("resigned"):
        extra = "\nre-signed with the new key (records beyond a revocation): " + ", ".join(
            f"{ch} {r[0]}..{r[1]}" for what in rec["resigned"].values() for ch, r in what["resigned"].items())
    emit(args, data, f"signing key rotated\n  old {data['old_key_id']}\n  new {data['new_key_id']}\n"
         f"records signed by the old key up to now stay valid; to revoke it: "
         f"fednode pki revoke {args.dir or '$FEDNODE_HOME'} {data['old_key_id']}{extra}")
    return 0


@command("pki revoke")
def cmd_pki_revoke(args: argparse.Namespace) -> int:
    data = revoke_key(open_home(args), args.key_id, args.reason)
    through = ", ".join(f"{ch} {s}" for ch, s in data["through"].items())
    emit(args, data, f"key {data['revoked']} of {data['code']} revoked: it verifies nothing beyond seq ({through}) "
         f"of {data['code']}'s logs" + ("" if data["via"] == "admin" else
                                        "\nthe node is stopped: the revocation takes effect when it starts"))
    return 0


@command("pki keys")
def cmd_pki_keys(args: argparse.Namespace) -> int:
    rows = list_keys(open_home(args), args.code)

    def human() -> str:
        lines = [f"{'key id':<64}  {'node':<12}{'state':<15}{'valid until':<22}"]
        for r in rows:
            state = r["state"] + (" *" if r["current"] else "")
            lines.append(f"{r['key_id']:<64}  {r['code']:<12}{state:<15}{r['not_after'][:19]:<22}")
            if r["revoked_through"]:
                lines.append(f"{'':<66}revoked through {r['revoked_through']} ({r['revoked_reason']})")
        lines.append("* this node's current signing key")
        return "\n".join(lines)

    emit(args, rows, human)
    return 0
