"""The pure core: events, labels, canonical JSON, ids, states and the loop's fold.

Nothing here does I/O or knows about the store, the models or the tools: these are the
values every other layer passes around, and the folds that derive state from the log.
"""
