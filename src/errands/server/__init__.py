"""The errands server (``errands up``): the runner, the JSON API and the inbox in one process.

See ``docs/server.md``. Modules: :mod:`.serve` (start-up, shutdown), :mod:`.worker`
(the runner's thread), :mod:`.app` (the ASGI app), :mod:`.api` (routes),
:mod:`.schemas` (bodies), :mod:`.actions` (what the routes do), :mod:`.streams`
(server-sent events), :mod:`.inbox` (the pages), :mod:`.auth` (Host, Origin, token,
CSRF), :mod:`.files` (server.json, the token file), :mod:`.hub` (live wake-ups),
:mod:`.notify` (the webhook), :mod:`.idempotency` (Idempotency-Key).
"""
