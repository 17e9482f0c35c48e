"""The permission boundary: rules, approvals and (later) flow control and sandboxing."""
