"""The admin socket's own faults: a client that goes away before its answer (a CLI killed, a probe that
timed out while the node was busy starting) costs the node nothing: no unhandled exception in asyncio's
callback, the request still answered as far as it can be, the next client served."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

from node.runtime import admin


def test_a_client_gone_before_its_answer_is_no_error(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[dict[str, Any]], bytes]:
        loop = asyncio.get_running_loop()
        unhandled: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, ctx: unhandled.append(ctx))
        answered = asyncio.Event()

        async def slow(_rt: Any, req: dict[str, Any]) -> Any:
            await asyncio.sleep(0.2)  # the client closes meanwhile
            answered.set()
            return {"echo": req.get("n")}

        admin.OPS["test.slow"] = slow
        rt = object()
        path = str(tmp_path / "admin.sock")
        server = await asyncio.start_unix_server(lambda r, w: admin._handle(rt, r, w), path=path)  # type: ignore[arg-type]
        try:
            gone = socket.socket(socket.AF_UNIX)
            gone.connect(path)
            gone.sendall(json.dumps({"op": "test.slow", "n": 1}).encode() + b"\n")
            gone.close()
            await asyncio.wait_for(answered.wait(), 5)
            await asyncio.sleep(0.2)  # the answer written into the closed connection
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(json.dumps({"op": "test.slow", "n": 2}).encode() + b"\n")
            line = await asyncio.wait_for(reader.readline(), 5)
            writer.close()
        finally:
            server.close()
            await server.wait_closed()
            admin.OPS.pop("test.slow", None)
        return unhandled, line

    unhandled, line = asyncio.run(scenario())
    assert unhandled == [], unhandled
    assert json.loads(line) == {"ok": True, "result": {"echo": 2}}
