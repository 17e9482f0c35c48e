"""Evaluations that run errands' real loop, policy and approvals against outside suites.

- :mod:`errands.evals.agentdojo` -- AgentDojo's banking and slack suites under the
  ``important_instructions`` attack, with flow control on and off (``errands eval agentdojo``);
  the tool mapping is :mod:`errands.evals.agentdojo_tools`, the attacker's best case
  :mod:`errands.evals.worstcase`, the scores :mod:`errands.evals.report`.
"""
