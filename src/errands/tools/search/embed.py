"""Small static word embeddings shipped inside a PyPI package, for the tool search.

WordLlama (``pip install 'errands[embeddings]'``; MIT) ships its ``l2_supercat_256``
model in its wheel: a 32,000-token vocabulary of 256-dimensional vectors (16 MB, taken
from a large language model's token embeddings and trained for similarity) and its
tokenizer. A text's vector is the mean of its tokens' vectors, normalised, so two texts
are as similar as the cosine of their vectors: "weather forecast for Boston" is near
``get_current_weather``'s description though they share no word.

Only the files are read (WordLlama's own loader looks for the tokenizer in the wrong
folder and then downloads it): numpy, ``safetensors`` and ``tokenizers`` do the rest.
Nothing reaches the network. Without the package, :func:`load_embedder` gives None and
the search is BM25's alone.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from tokenizers import Tokenizer

__all__ = ["MODEL", "Embedder", "load_embedder"]

MODEL = "wordllama l2_supercat_256"
_WEIGHTS = Path("weights") / "l2_supercat_256.safetensors"
_TOKENIZER = Path("tokenizers") / "l2_supercat_tokenizer_config.json"


class Embedder:
    """A static embedding: a text is the normalised mean of its tokens' vectors."""

    name = MODEL

    def __init__(self, vectors: npt.NDArray[np.float32], tokenizer: Tokenizer) -> None:
        self.vectors = vectors
        self._tokenizer = tokenizer
        self._lock = threading.Lock()  # (a Tokenizer is not documented as thread-safe)

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """One unit vector a text (a text with no known token: zeros), as rows."""
        import numpy as np

        with self._lock:
            encoded = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        out = np.zeros((len(texts), self.vectors.shape[1]), dtype=np.float32)
        for row, enc in enumerate(encoded):
            if enc.ids:
                out[row] = self.vectors[enc.ids].mean(axis=0)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        norms[norms == 0] = 1.0
        result: npt.NDArray[np.float32] = out / norms
        return result


def _package_folder(name: str) -> Path | None:
    """Where package *name* is installed (without importing it), or None."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@lru_cache(maxsize=1)
def load_embedder() -> Embedder | None:
    """WordLlama's shipped model (loaded once a process), or None when the package, its
    files or numpy/safetensors/tokenizers are missing."""
    folder = _package_folder("wordllama")
    if folder is None or not (folder / _WEIGHTS).is_file() or not (folder / _TOKENIZER).is_file():
        return None
    try:
        import numpy as np
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer
    except ImportError:
        return None
    vectors = np.ascontiguousarray(
        load_file(str(folder / _WEIGHTS))["embedding.weight"], np.float32
    )
    tokenizer = Tokenizer.from_file(str(folder / _TOKENIZER))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return Embedder(vectors, tokenizer)
