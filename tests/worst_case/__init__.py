"""The worst-case suite's world and case generators (``tests/test_worst_case.py``)."""
