"""The engine: the loop, tool dispatch, the runner (leases, claiming, wake-ups), limits,
and what a person does to errands (start, tell, cancel).

Time-driven work (schedules, watches, sleeping errands) joins the runner here as a
scheduler; see docs/architecture.md, "Where does new code go".
"""
