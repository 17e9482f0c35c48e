"""The sandbox: where tools that run programs (a shell) are confined.

Empty for now: the sandboxed ``shell`` tool (bubblewrap, one egress policy for every
network path, secrets that never reach the model) lands here. See
docs/architecture.md, "Where does new code go".
"""
