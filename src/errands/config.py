"""Configuration: ``ERRANDS_HOME`` and ``ERRANDS_HOME/errands.toml``.

``ERRANDS_HOME`` defaults to the per-user data directory (``~/.local/share/errands`` on
Linux). The config file is optional; a malformed one is refused with one clear
message (:class:`ConfigError`) and nothing is changed. errands never rewrites it.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal, Self
from zoneinfo import ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from errands.clock import zone
from errands.core.events import EffectClass, Limits
from errands.errors import ConfigError
from errands.mailconfig import EmailSettings

__all__ = [
    "BudgetSettings",
    "ConfigError",
    "ContextSettings",
    "McpServerSettings",
    "McpSettings",
    "ModelSettings",
    "NetworkSettings",
    "NotifySettings",
    "Price",
    "RetentionSettings",
    "SecretSettings",
    "ServerSettings",
    "Settings",
    "ToolSettings",
    "errands_home",
    "load_settings",
]


class NetworkSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # private/loopback/link-local addresses or networks the network tools may reach
    allow_private: list[str] = []
    max_response_bytes: int = Field(default=2_000_000, gt=0)
    timeout_seconds: float = Field(default=20.0, gt=0)
    # the one egress policy (tools/netguard.py): the hosts the shell's sandbox may reach
    # through errands' proxy, and -- when set -- the only hosts fetch_url/http_request
    # reach: "pypi.org" (ports 80, 443), "*.github.com" (its subdomains), "host:8443"
    egress_allow: list[str] = []
    # bytes one shell call may move through the proxy, both ways, all connections
    egress_max_bytes: int = Field(default=256_000_000, gt=0)

    @field_validator("egress_allow")
    @classmethod
    def _egress_entries(cls, entries: list[str]) -> list[str]:
        for entry in entries:
            if not _EGRESS_ENTRY.fullmatch(entry.strip()):
                raise ValueError(
                    f"egress_allow: {entry!r} is not a host, *.domain or [IPv6] with an "
                    'optional :port (e.g. "pypi.org", "*.github.com", "10.0.0.5:8080")'
                )
        return [entry.strip().lower() for entry in entries]


_EGRESS_ENTRY = re.compile(
    r"(?:\*\.)?[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?(?::[0-9]{1,5})?"
    r"|\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?"
)


# --- workspaces: where an errand's directory may be (tools/workspace.py) ---------------

# no workspace (nor workspace root) may be one of these or lie inside one ...
SYSTEM_TREES = (
    "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/boot",
    "/dev", "/proc", "/sys", "/run", "/var", "/snap", "/private/etc", "/private/var",
)  # fmt: skip
# ... except inside these (scratch space meant for anyone)
SYSTEM_TREE_EXCEPTIONS = ("/var/tmp", "/private/var/tmp", "/private/var/folders")
# ... and none may be one of these (they hold everybody's files)
SYSTEM_DIRS = (
    "/", "/home", "/root", "/tmp", "/var/tmp", "/mnt", "/media", "/srv", "/opt",
    "/Users", "/Volumes", "/private", "/private/tmp", "/private/var/tmp",
)  # fmt: skip


def system_directory(path: Path) -> str | None:
    """Why *path* (absolute, symbolic links resolved) is a system directory no workspace
    may be in, or None."""
    if str(path) in SYSTEM_DIRS:
        return f"{path} is a system directory"
    if any(path.is_relative_to(tree) for tree in SYSTEM_TREE_EXCEPTIONS):
        return None
    for tree in SYSTEM_TREES:
        if path.is_relative_to(tree):
            if str(path) == tree:
                return f"{path} is a system directory"
            return f"{path} is inside the system directory {tree}"
    return None


class WorkspaceSettings(BaseModel):
    """``[workspaces]``: the directories under which a person may name an errand's
    workspace (the API's ``workspace``, ``errands run --workspace``). Without a name an
    errand works in ``ERRANDS_HOME/workspaces/ID``, which is always allowed."""

    model_config = ConfigDict(extra="forbid")

    roots: list[Path] = []

    @field_validator("roots")
    @classmethod
    def _safe_roots(cls, roots: list[Path]) -> list[Path]:
        resolved = []
        for root in roots:
            expanded = root.expanduser()
            if not expanded.is_absolute():
                raise ValueError(f"{str(root)!r} is not an absolute path (or ~/...)")
            real = Path(os.path.realpath(expanded))  # a symlink is judged by its target
            why = system_directory(real)
            if why is not None:
                raise ValueError(f"{str(root)!r} cannot hold workspaces: {why}")
            resolved.append(real)
        return resolved


# --- the server (errands up) and its notifier: see docs/server.md ----------------------


class ServerSettings(BaseModel):
    """``[server]``: where ``errands up`` listens and what it lets in."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=7878, ge=0, le=65535)
    # ask for the token even on loopback (it is always asked for on any other address)
    require_token: bool = False
    # extra names (or name:port) the server answers to, e.g. behind a reverse proxy
    allowed_hosts: list[str] = []
    max_body_bytes: int = Field(default=1_048_576, gt=0)


NotifyEvent = Literal[
    "approval_requested", "errand_done", "errand_failed", "needs_attention", "watch_changed"
]


class NotifySettings(BaseModel):
    """``[notify]``: a webhook POSTed when an errand needs you, finishes or fails."""

    model_config = ConfigDict(extra="forbid")

    webhook_url: str | None = Field(default=None, pattern=r"^https?://")
    # extra request headers, e.g. {Authorization = "Bearer ..."} for ntfy
    headers: dict[str, str] = {}
    events: list[NotifyEvent] = [
        "approval_requested",
        "errand_done",
        "errand_failed",
        "needs_attention",
    ]
    retries: int = Field(default=3, ge=0, le=10)
    timeout_seconds: float = Field(default=5.0, gt=0)
    # the inbox address put in notifications (default: the address the server listens on)
    inbox_url: str | None = None


class ToolSettings(BaseModel):
    """``[tools]``: modules whose ``errands_tools`` join the built-ins (and the installed
    plugins); see errands.tools.plugins. Their code runs unsandboxed inside errands."""

    model_config = ConfigDict(extra="forbid")

    modules: list[str] = []
    # tool search (errands.tools.search; docs/tool-search.md): past this many tokens of
    # tool schemas an errand sees the pinned tools and search_tools (0: never search)
    search_budget_tokens: int = Field(default=5_000, ge=0)
    search_pinned: list[str] = [  # always offered (errands' everyday tools)
        "read_file", "write_file", "list_files", "shell", "fetch_url", "wait",
        "recall_output", "remember", "search_memory", "extract",
    ]  # fmt: skip
    search_results: int = Field(default=5, ge=1, le=50)  # tools one search finds


class Price(BaseModel):
    """USD per million tokens."""

    model_config = ConfigDict(extra="forbid")

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cached_input: float | None = Field(default=None, ge=0)
    cache_write: float | None = Field(default=None, ge=0)


class BudgetSettings(BaseModel):
    """``[budget]``: spending caps enforced in the store before every model call
    (docs/providers.md, "Budgets"). An errand's own cap is its ``max_cost_usd`` limit."""

    model_config = ConfigDict(extra="forbid")

    daily_usd: float | None = Field(default=None, gt=0)  # every errand together, per day
    # how long a reservation outlives a call that never settles (a crash, a lost process)
    hold_seconds: float = Field(default=900.0, gt=0)


class RetentionSettings(BaseModel):
    """``[retention]``: how long finished errands keep their full logs, and what else
    errands forgets (docs/store.md, "Retention"). ``errands up`` applies it every
    ``every_minutes``; ``errands gc`` applies it (or, with ``--dry-run``, shows it)."""

    model_config = ConfigDict(extra="forbid")

    # a finished errand's full log is kept this long after it finished, then compacted
    # to its request, result, cost rows and a summary
    keep_days: float = Field(default=30.0, gt=0)
    # each schedule (and watch) keeps its last N runs in full; older runs are compacted
    schedule_runs: int = Field(default=100, ge=1)
    every_minutes: float = Field(default=60.0, gt=0)
    enabled: bool = True  # false: errands up never runs it (errands gc still does)


class StoreSettings(BaseModel):
    """``[store]``: where errands keeps its logs. Without ``url``, the SQLite file in the
    home; with ``url = "postgresql://…"`` (or ``ERRANDS_STORE_URL``), a PostgreSQL
    database many processes and hosts share (docs/scale-out.md; the ``postgres`` extra)."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = None
    # how long an errand's lease lasts without renewal (renewed every third of it): a
    # process that dies holds its errands this long before another takes them over
    lease_seconds: float = Field(default=15.0, ge=1.0, le=3600.0)

    @field_validator("url")
    @classmethod
    def _postgres(cls, url: str | None) -> str | None:
        return None if url is None else check_store_url(url)


STORE_URL_ENV = "ERRANDS_STORE_URL"


def check_store_url(url: str) -> str:
    """*url* if it names a PostgreSQL database (``postgresql://`` or ``postgres://``)."""
    if not url.startswith(("postgresql://", "postgres://")):
        raise ValueError(
            "the store's url must be a PostgreSQL URL (postgresql://USER@HOST/DATABASE);"
            " leave it out to keep the SQLite file in the home"
        )
    return url


class SubagentSettings(BaseModel):
    """``[subagents]``: sub-errands started by ``delegate`` (docs/subagents.md)."""

    model_config = ConfigDict(extra="forbid")

    max_parallel: int = Field(default=16, ge=1)  # children of one delegate call
    max_total: int = Field(default=256, ge=1)  # sub-errands open on the server at once
    max_depth: int = Field(default=2, ge=1)  # a child's child's ... (the root is depth 0)
    result_chars: int = Field(default=8000, ge=200)  # each answer, cut (~2,000 tokens)
    # the longest a parent sleeps before it looks at its children itself (a child's end
    # wakes it at once; this only bounds a wake-up lost to a crash)
    recheck_seconds: float = Field(default=3600.0, gt=0)


class ContextSettings(BaseModel):
    """``[context]``: how a long errand's context is kept inside its model's window
    (docs/context.md). Shares are of the model's context window."""

    model_config = ConfigDict(extra="forbid")

    compact_at: float = Field(default=0.8, gt=0, le=1)  # compact before passing this share
    compact_to: float = Field(default=0.5, gt=0, lt=1)  # ... down to this share
    summary_tokens: int = Field(default=2000, gt=0)  # the summary's max_tokens

    @model_validator(mode="after")
    def _order(self) -> Self:
        if self.compact_to >= self.compact_at:
            raise ValueError(
                f"compact_to ({self.compact_to:g}) must be below compact_at ({self.compact_at:g})"
            )
        return self


class ModelSettings(BaseModel):
    """``[models."SPEC"]``: what errands should know about one model spec."""

    model_config = ConfigDict(extra="forbid")

    context_window: int | None = Field(default=None, gt=0)  # tokens (input and output)


class ProviderSettings(BaseModel):
    """``[providers.NAME]``: a named endpoint (``NAME:MODEL`` specs), or the limits and
    retry settings of a built-in provider when NAME is ``openai``, ``anthropic``, ...
    See docs/providers.md, "Failover, retries and rate limits"."""

    model_config = ConfigDict(extra="forbid")

    kind: str = "openai"
    base_url: str | None = None
    api_key_env: str | None = None  # the name of the variable holding the key, never the key
    # rate limits, per model on this endpoint, shared by every errand in the process
    rpm: int | None = Field(default=None, gt=0)  # requests per minute
    itpm: int | None = Field(default=None, gt=0)  # input tokens per minute
    otpm: int | None = Field(default=None, gt=0)  # output tokens per minute
    tpm: int | None = Field(default=None, gt=0)  # input + output tokens per minute
    limit_window_seconds: float = Field(default=60.0, gt=0)  # the provider's window
    cache_reads_count: bool | None = None  # do cached input tokens count toward ITPM?
    # retries, timeouts and the circuit breaker (used in fallback chains)
    timeout_seconds: float | None = Field(default=None, gt=0)  # per read of the response
    # a whole attempt's deadline, however the server trickles (keep-alives reset a read timeout)
    call_deadline_seconds: float = Field(default=600.0, gt=0)
    # after the retries: how long an errand waits for a provider that is down before failing
    outage_wait_seconds: float = Field(default=900.0, ge=0)
    max_attempts: int = Field(default=4, ge=1, le=20)
    retry_max_seconds: float = Field(default=120.0, gt=0)
    breaker_failures: int = Field(default=3, ge=1)
    breaker_cooldown_seconds: float = Field(default=30.0, gt=0)


class SecretSettings(BaseModel):
    """``[secrets.NAME]``: a secret errands may send by name (``secret:NAME``, e.g. a
    watch's header) -- the environment variable that holds it (default: NAME) and the
    hosts it may go to (it and their subdomains). The value is never stored or shown."""

    model_config = ConfigDict(extra="forbid")

    env: str | None = None
    hosts: list[str] = Field(min_length=1)


# --- MCP servers: their tools, pinned (errands.tools.mcp; docs/mcp.md) -----------------

# a server's name is part of its tools' names (mcp__SERVER__TOOL): letters, digits, - and
# single underscores between them (a double or a last one would make the name ambiguous)
SERVER_NAME = r"^[A-Za-z0-9](?:_?[A-Za-z0-9-])*$"
_SERVER_NAME = re.compile(SERVER_NAME)
MAX_SERVER_NAME = 24


class McpServerSettings(BaseModel):
    """``[mcp.servers.NAME]``: one server -- a ``command`` errands starts (stdio), or the
    ``url`` of a streamable-HTTP endpoint."""

    model_config = ConfigDict(extra="forbid")

    command: list[str] | None = Field(default=None, min_length=1)
    url: str | None = Field(default=None, pattern=r"^https?://")
    # stdio: the working directory, fixed variables, and variables taken from errands' own
    # environment (the server's name -> errands' name); nothing else is inherited but the
    # SDK's safe few (HOME, PATH, USER, ...)
    cwd: Path | None = None
    env: dict[str, str] = {}
    env_from: dict[str, str] = {}
    # HTTP: request headers whose values are in environment variables (header -> variable)
    headers_env: dict[str, str] = {}
    # per tool (its name on the server): the effect class instead of the one its
    # annotations give (errands policy rules on mcp__NAME__TOOL decide per tool too)
    effects: dict[str, EffectClass] = {}
    # the server's resources and prompts, as tools errands defines (mcp__NAME__resources_list,
    # __resource_read, __prompts_list, __prompt_get); what they return is untrusted
    resources: bool = False
    prompts: bool = False
    # a call, or a listing, that takes longer is stopped (and the server restarted)
    timeout_seconds: float = Field(default=60.0, gt=0)
    # starting the server and negotiating the protocol
    startup_seconds: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _one_transport(self) -> Self:
        if (self.command is None) == (self.url is None):
            raise ValueError("give a server either a command (stdio) or a url (HTTP), not both")
        if self.url is None and self.headers_env:
            raise ValueError("headers_env is for a server with a url")
        if self.command is None and (self.env or self.env_from or self.cwd):
            raise ValueError("env, env_from and cwd are for a server with a command")
        return self


class McpSettings(BaseModel):
    """``[mcp]``: the servers, and how often their tools are listed again."""

    model_config = ConfigDict(extra="forbid")

    servers: dict[str, McpServerSettings] = {}
    # a server may change its tools at any time (two instances behind one URL may list
    # different ones): a call is preceded by a new listing when the last is older
    relist_seconds: float = Field(default=60.0, ge=0)
    # a result longer than this (in characters) is cut, saying so
    max_result_chars: int = Field(default=200_000, gt=0)
    # after a crash, a server is started again after 1 s, 2 s, 4 s ... up to this
    max_backoff_seconds: float = Field(default=60.0, gt=0)

    @field_validator("servers")
    @classmethod
    def _names(cls, servers: dict[str, McpServerSettings]) -> dict[str, McpServerSettings]:
        for name in servers:
            if len(name) > MAX_SERVER_NAME or not _SERVER_NAME.match(name):
                raise ValueError(
                    f"{name!r} cannot name an MCP server: use up to {MAX_SERVER_NAME} letters, "
                    "digits, - and single _ (its tools are called mcp__NAME__TOOL)"
                )
        return servers


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    home: Path = Path(".")
    default_model: str = "scripted:demo"
    system_prompt: str = (
        "You are errands, an agent that carries out one errand for a person. "
        "Use the tools you are given; say plainly when you are done and what you did."
    )
    max_tokens: int = Field(default=4096, gt=0)
    # the person's time zone (an IANA name, e.g. "Europe/Paris"; "local": the machine's):
    # models are told the date in it, and schedules run by it
    timezone: str = "local"
    # a tool call still running after this long is stopped (its result says so)
    tool_timeout_seconds: float = Field(default=600.0, gt=0)
    # how hard models think before answering, mapped per provider (docs/providers.md);
    # None: the provider's default
    reasoning: Literal["minimal", "low", "medium", "high"] | None = None
    limits: Limits = Limits()
    budget: BudgetSettings = BudgetSettings()
    retention: RetentionSettings = RetentionSettings()
    store: StoreSettings = StoreSettings()
    network: NetworkSettings = NetworkSettings()
    prices: dict[str, Price] = {}
    providers: dict[str, ProviderSettings] = {}
    # named fallback chains: [chains] main = ["anthropic:A", "openai:C"] -> --model chain:main
    chains: dict[str, list[str]] = {}
    # the port of errands' own server, which network tools must never reach
    server_port: int | None = None
    server: ServerSettings = ServerSettings()
    notify: NotifySettings = NotifySettings()
    # [workspaces] (``workspaces`` is the default folder's path, below)
    workspace_roots: WorkspaceSettings = Field(
        default_factory=WorkspaceSettings, alias="workspaces"
    )
    tools: ToolSettings = ToolSettings()
    secrets: dict[str, SecretSettings] = {}
    # [mcp]: MCP servers whose tools errands offers, once pinned (errands.tools.mcp)
    mcp: McpSettings = McpSettings()
    subagents: SubagentSettings = SubagentSettings()
    # [context] and [models."SPEC"]: compaction of long errands (docs/context.md)
    context: ContextSettings = ContextSettings()
    models: dict[str, ModelSettings] = {}
    # [email]: the mail server (errands.mailconfig; docs/email.md); None: no email
    email: EmailSettings | None = None

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        try:
            zone(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {name!r}: use an IANA name such as Europe/Paris, "
                'or "local" for this machine\'s'
            ) from None
        return name

    @property
    def db_path(self) -> Path:
        return self.home / "errands.sqlite"

    @property
    def workspaces(self) -> Path:
        return self.home / "workspaces"

    @property
    def allowed_workspace_roots(self) -> list[Path]:
        """Where a named workspace may lie: ``ERRANDS_HOME/workspaces`` and ``[workspaces]
        roots``, symbolic links resolved."""
        return [Path(os.path.realpath(self.workspaces)), *self.workspace_roots.roots]

    @property
    def store_url(self) -> str | None:
        """The PostgreSQL store's URL (``ERRANDS_STORE_URL``, else ``[store] url``); None:
        the SQLite file."""
        env = os.environ.get(STORE_URL_ENV)
        if not env:
            return self.store.url
        try:
            return check_store_url(env)
        except ValueError as exc:
            raise ConfigError(f"{STORE_URL_ENV}: {exc}") from None

    @property
    def config_path(self) -> Path:
        return self.home / "errands.toml"


def errands_home(explicit: str | Path | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser().resolve()
    env = os.environ.get("ERRANDS_HOME")
    if env:
        return Path(env).expanduser().resolve()
    from platformdirs import user_data_dir

    return Path(user_data_dir("errands", appauthor=False)).resolve()


def load_settings(home: str | Path | None = None, config: str | Path | None = None) -> Settings:
    """Settings from ``errands.toml`` under the home (or *config*), with defaults."""
    root = errands_home(home)
    path = Path(config).expanduser() if config else root / "errands.toml"
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    elif config:
        raise ConfigError(f"{path}: no such config file")
    try:
        return Settings.model_validate({**data, "home": root})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise ConfigError(f"{path}: {where}: {first['msg']}{more}") from None
