"""The ``errands`` commands, one module per group; each module's ``register`` adds its
commands to the app (:mod:`errands.cli.app`)."""
