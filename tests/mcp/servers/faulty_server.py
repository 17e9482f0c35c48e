"""A faulty MCP server (raw JSON-RPC over stdio, protocol 2025-11-25), for the tests of
what errands does when a server misbehaves. Its tools:

- ``echo``: answers (it works after a restart);
- ``crash``: the process exits mid-call;
- ``hang``: never answers;
- ``malformed``: answers with a line that is not JSON;
- ``big``: answers with a 10 MB text.

Each start appends a line to the file named by FAULTY_STARTS (if set).
"""

from __future__ import annotations

import json
import os
import sys
import time

TOOLS = [
    {
        "name": name,
        "description": f"{name} (a faulty server's tool)",
        "inputSchema": {"type": "object"},
    }
    for name in ("echo", "crash", "hang", "malformed", "big")
]


def send(message: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main() -> None:
    starts = os.environ.get("FAULTY_STARTS")
    if starts:
        with open(starts, "a") as f:
            f.write(f"{os.getpid()}\n")
    for line in sys.stdin:
        msg = json.loads(line)
        if "id" not in msg:
            continue
        method, ident = msg.get("method"), msg["id"]
        result: dict[str, object]
        if method == "initialize":
            result = {
                "protocolVersion": "2025-11-25",
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "faulty", "version": "1"},
            }
        elif method == "tools/list":
            result = {"tools": TOOLS}
        elif method == "tools/call":
            name = msg["params"]["name"]
            if name == "crash":
                os._exit(3)
            if name == "hang":
                time.sleep(3600)
            if name == "malformed":
                sys.stdout.write("{this is not json\n")
                sys.stdout.flush()
                continue
            text = (
                "x" * 10_000_000
                if name == "big"
                else "echo: " + json.dumps(msg["params"].get("arguments"))
            )
            result = {"content": [{"type": "text", "text": text}]}
        elif method == "ping":
            result = {}
        else:
            send(
                {
                    "jsonrpc": "2.0",
                    "id": ident,
                    "error": {"code": -32601, "message": "no such method"},
                }
            )
            continue
        send({"jsonrpc": "2.0", "id": ident, "result": result})


if __name__ == "__main__":
    main()
