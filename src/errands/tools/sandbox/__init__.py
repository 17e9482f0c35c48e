"""The sandbox: where tools that run programs (the shell) are confined.

- :mod:`~errands.tools.sandbox.bwrap`: bubblewrap, its mounts, user, environment, limits;
- :mod:`~errands.tools.sandbox.gitdirs`: the workspace's git directory, read-only;
- :mod:`~errands.tools.sandbox.seccomp`: the system calls refused inside;
- :mod:`~errands.tools.sandbox.proxy`, :mod:`~errands.tools.sandbox.bridge`,
  :mod:`~errands.tools.sandbox.egress`: the only way out, errands' filtering proxy;
- :mod:`~errands.tools.sandbox.secrets`: secrets by name, redacted from the output;
- :mod:`~errands.tools.sandbox.commands`: command lines parsed for the policy's rules;
- :mod:`~errands.tools.sandbox.doctor`: ``errands doctor``'s sandbox check.
"""
