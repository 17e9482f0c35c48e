"""Files that other programs run or trust later: the built-in ``executes-later`` vote.

A write to one of these paths is not "just a file in the workspace": the person's next
``git status`` runs the ``core.fsmonitor`` command in ``.git/config``, ``cd`` runs
``.envrc`` under direnv, opening the folder in VS Code can run a task, a push runs a CI
workflow. Such a write is at least ``ask``, whatever the effect-class default or an
``allow`` rule says, and an "always" approval does not cover it.

:data:`EXECUTES_LATER` is the one list: the policy matches it, ``docs/security.md``
shows it, and a parametrised test writes to an example of every entry. A glob is
matched, case-insensitively (a case-insensitive file system opens ``.GIT/config`` as
``.git/config``), against the canonical path relative to the workspace -- after
``..``, ``./``, surrounding whitespace and symbolic links are resolved
(:func:`errands.tools.canonical.canonical_path`). In a glob, ``*`` stays within one
path component, ``**/`` at the start is any number of directories (none included) and
``/**`` at the end is everything below.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["EXECUTES_LATER", "ExecutesLater", "executes_later"]


@dataclass(frozen=True)
class ExecutesLater:
    glob: str
    why: str  # who runs or trusts it, shown on the approval card


EXECUTES_LATER: tuple[ExecutesLater, ...] = (
    # version control
    ExecutesLater("**/.git", "a .git file points git at another repository's config and hooks"),
    ExecutesLater(
        "**/.git/**", "git runs hooks and commands from its config (core.fsmonitor, aliases)"
    ),
    ExecutesLater("**/.gitattributes", "git runs the filter and diff drivers it names"),
    ExecutesLater("**/.gitmodules", "git fetches and updates the submodules it names"),
    ExecutesLater("**/.gitconfig", "git runs commands from its config"),
    ExecutesLater("**/.lfsconfig", "git-lfs reads it on every checkout"),
    ExecutesLater("**/.hg/**", "Mercurial runs the hooks in .hg/hgrc"),
    # shells and the environment
    ExecutesLater("**/.envrc", "direnv runs it when you enter the directory"),
    ExecutesLater("**/.env", "tools load it into the environment of what they run"),
    ExecutesLater("**/.env.*", "tools load it into the environment of what they run"),
    ExecutesLater("**/.bashrc", "bash runs it"),
    ExecutesLater("**/.bash_profile", "bash runs it"),
    ExecutesLater("**/.bash_login", "bash runs it"),
    ExecutesLater("**/.bash_logout", "bash runs it"),
    ExecutesLater("**/.profile", "login shells run it"),
    ExecutesLater("**/.zshrc", "zsh runs it"),
    ExecutesLater("**/.zshenv", "zsh runs it"),
    ExecutesLater("**/.zprofile", "zsh runs it"),
    ExecutesLater("**/.zlogin", "zsh runs it"),
    ExecutesLater("**/.zlogout", "zsh runs it"),
    ExecutesLater("**/.kshrc", "ksh runs it"),
    ExecutesLater("**/.cshrc", "csh runs it"),
    ExecutesLater("**/.tcshrc", "tcsh runs it"),
    ExecutesLater("**/.login", "csh runs it"),
    ExecutesLater("**/.config/fish/**", "fish runs its config"),
    ExecutesLater("**/.ssh/**", "ssh runs ProxyCommand from its config and trusts its keys"),
    # editors and IDEs
    ExecutesLater("**/.vscode/**", "VS Code runs its tasks and the programs its settings name"),
    ExecutesLater("**/*.code-workspace", "VS Code runs its tasks and settings"),
    ExecutesLater("**/.idea/**", "JetBrains IDEs run its run configurations and tools"),
    ExecutesLater("**/.devcontainer/**", "dev containers run initializeCommand on your machine"),
    ExecutesLater("**/.devcontainer.json", "dev containers run initializeCommand on your machine"),
    ExecutesLater("**/.exrc", "vim runs it (exrc)"),
    ExecutesLater("**/.nvimrc", "neovim runs it (exrc)"),
    ExecutesLater("**/.nvim.lua", "neovim runs it (exrc)"),
    ExecutesLater("**/.dir-locals.el", "Emacs evaluates it"),
    # CI and commit hooks
    ExecutesLater(".github/**", "GitHub runs its workflows and actions, and trusts CODEOWNERS"),
    ExecutesLater(".gitlab-ci.yml", "GitLab CI runs it"),
    ExecutesLater(".gitlab/**", "GitLab CI runs what it includes"),
    ExecutesLater(".circleci/**", "CircleCI runs it"),
    ExecutesLater(".travis.yml", "Travis CI runs it"),
    ExecutesLater(".drone.yml", "Drone CI runs it"),
    ExecutesLater(".woodpecker.yml", "Woodpecker CI runs it"),
    ExecutesLater(".woodpecker/**", "Woodpecker CI runs it"),
    ExecutesLater(".buildkite/**", "Buildkite runs it"),
    ExecutesLater("azure-pipelines.yml", "Azure Pipelines runs it"),
    ExecutesLater("bitbucket-pipelines.yml", "Bitbucket Pipelines runs it"),
    ExecutesLater("Jenkinsfile", "Jenkins runs it"),
    ExecutesLater(".pre-commit-config.yaml", "pre-commit runs its hooks on every commit"),
    ExecutesLater(".husky/**", "husky runs its git hooks"),
    ExecutesLater("lefthook.yml", "lefthook runs its git hooks"),
    ExecutesLater(".lefthook.yml", "lefthook runs its git hooks"),
    # package managers and toolchains
    ExecutesLater("**/.npmrc", "npm runs the programs it names (script-shell, node-options)"),
    ExecutesLater("**/.yarnrc", "yarn reads its settings"),
    ExecutesLater("**/.yarnrc.yml", "yarn runs the yarnPath it names on every command"),
    ExecutesLater("**/.pnpmfile.cjs", "pnpm runs it on install"),
    ExecutesLater("**/.cargo/config", "cargo runs the wrappers and aliases it names"),
    ExecutesLater("**/.cargo/config.toml", "cargo runs the wrappers and aliases it names"),
    ExecutesLater("**/rust-toolchain.toml", "rustup runs the toolchain it names"),
    ExecutesLater("**/rust-toolchain", "rustup runs the toolchain it names"),
    ExecutesLater("**/pip.conf", "pip installs from the indexes it names"),
    ExecutesLater("**/.mise.toml", "mise runs its hooks and tasks"),
    ExecutesLater("**/mise.toml", "mise runs its hooks and tasks"),
    ExecutesLater("**/.venv/**", "Python runs .pth files and scripts of the virtualenv"),
    ExecutesLater("**/node_modules/**", "npm and npx run the programs installed there"),
)


def _regex(glob: str) -> str:
    out: list[str] = []
    i = 0
    if glob.startswith("**/"):
        out.append("(?:[^/]+/)*")
        i = 3
    tail = glob.endswith("/**")
    body = glob[i : len(glob) - 3] if tail else glob[i:]
    for c in body:
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        else:
            out.append(re.escape(c))
    if tail:
        out.append("(?:/.*)?")  # the directory itself, and everything below it
    return "".join(out)


_MATCHER = re.compile(
    "|".join(f"(?P<e{n}>{_regex(e.glob)})" for n, e in enumerate(EXECUTES_LATER)),
    re.IGNORECASE | re.DOTALL,
)


@lru_cache(maxsize=4096)
def executes_later(relative: str) -> ExecutesLater | None:
    """The entry of :data:`EXECUTES_LATER` that the canonical *relative* path falls
    under, or None."""
    m = _MATCHER.fullmatch(relative)
    if m is None or m.lastgroup is None:
        return None
    return EXECUTES_LATER[int(m.lastgroup[1:])]
