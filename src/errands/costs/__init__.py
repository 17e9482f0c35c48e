"""Money: what a model call costs (:mod:`.pricing`), what errands cost (:mod:`.report`),
and the arithmetic of budgets (:mod:`.spend`: caps, what was spent and what calls in
flight hold). Pure: no I/O. The loop's reservation before each call is
:mod:`errands.engine.budgets`; the budget tables are kept by the store."""
