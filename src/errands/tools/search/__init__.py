"""Tool search: thousands of tools, a few in each request (docs/tool-search.md).

- :mod:`~errands.tools.search.index` -- BM25 (SQLite FTS5) over tools' names,
  descriptions and parameters;
- :mod:`~errands.tools.search.toolset` -- :class:`SearchingToolset`: the pinned tools,
  ``search_tools``, and what the errand found, append-only;
- :mod:`~errands.tools.search.evaluate` -- ``errands eval tool-search`` on a corpus of
  tools and questions (BFCL's, in tests/data/tool-retrieval).
"""

from errands.tools.search.index import IndexedTool, ToolIndex
from errands.tools.search.toolset import FoundToolList, SearchingToolset, schema_tokens

__all__ = ["FoundToolList", "IndexedTool", "SearchingToolset", "ToolIndex", "schema_tokens"]
