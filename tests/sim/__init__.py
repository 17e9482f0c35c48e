"""Wire-protocol simulators of model providers, for tests (no model API is reachable).

Each simulator is a real HTTP server on 127.0.0.1 that validates requests against the
provider SDK's own types and builds responses with them. See :mod:`sim.core` for the
shared machinery (scripted turns, faults, the request record) and
:mod:`sim.openai_server` for OpenAI Chat Completions. Pytest fixtures: :mod:`sim.fixtures`.
"""
