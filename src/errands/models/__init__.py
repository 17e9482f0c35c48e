"""Models: a small protocol, the scripted model, and provider clients."""
