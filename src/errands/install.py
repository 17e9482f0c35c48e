"""How to install an optional extra, said the way this errands was installed.

From PyPI, ``pip install 'errands[anthropic]'``; from a checkout (the README's
``pip install -e '.[openai]'``), the same command with the checkout's path and the
virtual environment's pip -- the one a person can paste."""

from __future__ import annotations

import json
import sys
from functools import cache
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from urllib.parse import unquote, urlsplit

__all__ = ["extra_hint"]


@cache
def _checkout() -> Path | None:
    """The source tree errands was installed from in editable mode, if it was."""
    try:
        raw = distribution("errands").read_text("direct_url.json")
    except PackageNotFoundError:
        return None
    if not raw:
        return None
    try:
        info = json.loads(raw)
    except ValueError:
        return None
    if not info.get("dir_info", {}).get("editable"):
        return None
    url = urlsplit(str(info.get("url", "")))
    return Path(unquote(url.path)) if url.scheme == "file" else None


def extra_hint(extra: str) -> str:
    """The command that installs *extra*."""
    checkout = _checkout()
    if checkout is None:
        return f"pip install 'errands[{extra}]'"
    pip = Path(sys.prefix) / "bin" / "pip"
    return f"{pip} install -e '{checkout}[{extra}]'"
