"""Money: what a call costs (pricing), what errands cost (report), and budgets -- the
worst case a call may cost, reserved before it starts (budgets, spend)."""
