"""Flow control: what labelled data may do, whatever the model was told.

Every piece of an errand's context carries a label (:mod:`errands.core.labels`): where it
came from, whether an attacker could have written it (integrity), and how private it is
(confidentiality). The model is assumed to obey any instruction hidden in untrusted
content, so two rules are enforced here, outside the model:

- **P-T, trusted control.** Once untrusted content is in the errand's context, a
  consequential call -- ``external``, ``spend`` and ``irreversible`` ones, and a
  ``network`` call to a destination not in the person's own words or the ``[trusted]``
  domains -- asks, unless each of its arguments is *traceable* to a trusted source: the
  person's text (and a schedule's configuration), or the ``[trusted]`` allow-lists of
  ``domains``, ``recipients`` and ``payees`` in ``policy.toml``. The approval card says
  which argument came from where: "the url came from the page fetched at 10:02 from
  https://shop.example/widgets".
- **P-F, confidentiality.** A call that carries private or secret data from a tool (a
  workspace file, a mail, memory) to a destination -- a URL's host, a recipient, a payee
  -- outside the allowed set asks, showing what would leave and where. What a call
  carries: its arguments with a data role (a body, a subject, a file's content), its
  headers, a URL's path and query (and leftmost host label) -- unless the URL is a link
  copied whole from a piece, which carries nothing of the context -- and, for a tool
  that declares no argument roles at all, every argument.

Both hold under "always allow": an always-rule (or a standing rule) never turns these
asks into an allow. ``[flow]`` in ``policy.toml`` may make either a ``deny`` instead.

P-T traces every argument, what a call carries included: a message's body steers its
reader (a phishing link sent to the person's own colleague is a hijack), so a summary of
a page sent to someone asks once untrusted content is in the context.

Traceable means: the argument's text (case and white space aside) occurs in a trusted
piece; a URL is traceable when its host is (or is under) a trusted domain or a host the
person wrote; a recipient when it is listed, its domain is, or the person wrote it.
Private data is found by its text: a run of at least :data:`MIN_FRAGMENT` characters of a
private tool output inside an argument (encodings are not looked through: see
``docs/security.md``, "Not defended").
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote_plus

from pydantic import BaseModel, ConfigDict, Field

from errands.core.events import EffectClass
from errands.core.labels import Integrity, Label
from errands.core.pieces import Piece
from errands.tools.canonical import UrlError, canonical_url
from errands.tools.tool import ArgRole

if TYPE_CHECKING:
    from errands.policy.rules import Policy

__all__ = [
    "FlowSettings",
    "Trusted",
    "flow_verdict",
    "without_flow",
]

MIN_FRAGMENT = 8  # characters of private text that count as carrying it
CONSEQUENTIAL = frozenset({EffectClass.external, EffectClass.spend, EffectClass.irreversible})
_DESTINATIONS = frozenset({ArgRole.url, ArgRole.recipient, ArgRole.payee})
# what a call carries (P-F looks for private data in it)
DATA_ROLES = frozenset({ArgRole.body, ArgRole.content, ArgRole.subject})
_SPACE = re.compile(r"\s+")
# a host name as people write one (any script): labels, a dot, a top-level label of letters
_HOSTISH = re.compile(r"(?<![\w.@/-])((?:\w(?:[\w-]{0,61}\w)?\.)+[^\W\d_]{2,63})(?![\w-]|\.\w)")
# top-level labels that are far more often a file's suffix than a host's: "report.md" is a file
FILE_SUFFIXES = frozenset((
    "md", "txt", "rst", "py", "pyc", "sh", "bash", "zsh", "rs", "go", "js", "ts", "jsx",
    "tsx", "json", "yaml", "yml", "toml", "ini", "cfg", "conf", "csv", "tsv", "log", "pdf",
    "doc", "docx", "xls", "xlsx", "ppt", "pptx", "odt", "png", "jpg", "jpeg", "gif", "svg",
    "webp", "zip", "tar", "gz", "tgz", "bz2", "xz", "html", "htm", "css", "xml", "c", "h",
    "cc", "cpp", "hpp", "java", "kt", "rb", "php", "pl", "lua", "sql", "db", "sqlite",
    "lock", "env", "bak", "tmp",
))  # fmt: skip
_URL = re.compile(r"https?://[^\s<>\"'`]+")
_EMAIL = re.compile(r"[^\s@<>(),;:\"']+@[^\s@<>(),;:\"']+")
_SEPARATORS = re.compile(r"[,;\s]+")
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Trusted(BaseModel):
    """``[trusted]`` in ``policy.toml``: destinations the person vouches for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    domains: list[str] = Field(default_factory=list)  # example.com: it and its subdomains
    recipients: list[str] = Field(default_factory=list)  # addresses, or @domain
    payees: list[str] = Field(default_factory=list)  # names, IBANs, account ids


class FlowSettings(BaseModel):
    """``[flow]`` in ``policy.toml``: what a breach of each rule gets (ask, or deny)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    untrusted_control: Literal["ask", "deny"] = "ask"
    private_data: Literal["ask", "deny"] = "ask"
    # the person's own mail addresses: a mail to these only (every recipient one of them,
    # nothing else it goes to) is not held by P-T -- it tells the person what the errand
    # read, as its answer in the inbox does -- so an "always" for it holds. Off (empty) by
    # default; P-F still applies (docs/security.md, §12)
    own_addresses: list[str] = Field(default_factory=list)


def norm(text: str) -> str:
    return _SPACE.sub(" ", text).strip().casefold()


@dataclass
class _Corpus:
    """The trusted words of a context, normalised once per check (and only if needed):
    the host names they mention, the URLs they spell out, the addresses they name."""

    text: str
    hosts: set[str]
    urls: set[str]  # canonical text
    origins: set[tuple[str, int | None]]
    emails: set[str]

    @classmethod
    def of(cls, pieces: Iterable[Piece]) -> _Corpus:
        # words given to the errand -- the person's, a schedule's configuration -- never
        # a result (errands' own refusals repeat what the model wrote), nor the model's
        texts = [p.content.text for p in pieces if p.said and p.trusted]
        text = norm("\n".join(texts))
        hosts = set()
        for written in _HOSTISH.findall(text):
            if written.rsplit(".", 1)[1] in FILE_SUFFIXES:
                continue
            try:
                hosts.add(canonical_url(f"http://{written}/").host)
            except UrlError:
                continue
        urls, origins = set(), set()
        for written in _URL.findall(text):
            try:
                url = canonical_url(written.rstrip(".,;:!?)]}>'\""))
            except UrlError:
                continue
            urls.add(url.text)
            origins.add((url.host, url.port))
        emails = {e.strip(".") for e in _EMAIL.findall(text)}
        return cls(text, hosts, urls, origins, emails)

    def names(self, value: str) -> bool:
        """Does *value* occur in the words as a whole (not inside a longer word or
        number: 20 is not in "200", ice@x not in alice@x)?"""
        value = norm(value)
        if not value:
            return True
        pattern = r"(?<![\w@.+-])" + re.escape(value) + r"(?![\w@-]|\.\w)"
        return re.search(pattern, self.text) is not None


def _within(url: str, written: str) -> bool:
    """Is *url* the URL the person wrote, or below it (at a path segment)?"""
    if url == written:
        return True
    base = written if written.endswith("/") else written + "/"
    return url.startswith(base) or url.startswith(written + "?")


def _under(host: str, domains: Iterable[str]) -> bool:
    host = host.strip(".").casefold()
    for domain in domains:
        d = domain.strip().strip(".").casefold().removeprefix("*.")
        if d and (host == d or host.endswith("." + d)):
            return True
    return False


def _texts(value: Any) -> list[str]:
    """The strings an argument value is made of (numbers as written)."""
    if value is None or isinstance(value, bool):
        return []
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, (int, float)):
        return [
            repr(value) if isinstance(value, float) and not value.is_integer() else str(int(value))
        ]
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in _texts(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _texts(v)]
    return [str(value)]


class _Check:
    def __init__(self, call: Any, pieces: Sequence[Piece], trusted: Trusted) -> None:
        self.call = call
        self.pieces = pieces
        self.trusted = trusted
        self._corpus: _Corpus | None = None
        self._normed: list[str] | None = None

    @property
    def corpus(self) -> _Corpus:
        if self._corpus is None:
            self._corpus = _Corpus.of(self.pieces)
        return self._corpus

    @property
    def normed(self) -> list[str]:
        """Every piece's text, normalised -- once per check, in the pieces' order."""
        if self._normed is None:
            self._normed = [norm(p.content.text) for p in self.pieces]
        return self._normed

    # -- destinations -------------------------------------------------------------------

    def destination_allowed(self, role: ArgRole, value: str, *, acting: bool = False) -> bool:
        """Is *value* a destination the person named or vouches for? *acting*: the call
        changes something there -- a URL must then lie under one the person wrote out
        (or a trusted domain), not merely on a host they mentioned."""
        if role is ArgRole.url:
            try:
                url = canonical_url(value)
            except UrlError:
                return False
            if _under(url.host, self.trusted.domains):
                return True
            if acting:
                return any(_within(url.text, written) for written in self.corpus.urls)
            return (url.host, url.port) in self.corpus.origins or _under(
                url.host, self.corpus.hosts
            )
        parts = [p for p in _SEPARATORS.split(value.strip()) if p]
        if not parts:
            return False
        if role is ArgRole.recipient:
            return all(self._recipient(part) for part in parts)
        if role is ArgRole.payee:
            payees = {norm(p) for p in self.trusted.payees}
            return norm(value) in payees or self.corpus.names(value)
        return False

    def _recipient(self, address: str) -> bool:
        address = address.strip().casefold()
        listed = {r.strip().casefold() for r in self.trusted.recipients}
        domain = address.rpartition("@")[2] if "@" in address else ""
        return (
            address in listed
            or (bool(domain) and f"@{domain}" in listed)
            or (bool(domain) and _under(domain, self.trusted.domains))
            or address in self.corpus.emails
            or self.corpus.names(address)
        )

    def destinations(self) -> list[tuple[str, ArgRole, str]]:
        """(argument, role, value) of every argument that names where the call goes."""
        out = []
        for name, role in self.call.roles.items():
            if role in _DESTINATIONS:
                for text in _texts(self.call.arguments.get(name)):
                    out.append((name, role, text))
        return out

    # -- P-T ------------------------------------------------------------------------------

    def traceable(self, name: str, text: str) -> bool:
        role = self.call.roles.get(name)
        if role in _DESTINATIONS:
            assert role is not None
            acting = self.call.effect is not EffectClass.network
            return self.destination_allowed(role, text, acting=acting)
        if role is ArgRole.method:  # a read is a read; DELETE must be the person's word
            return text.strip().upper() in READ_METHODS or self.corpus.names(text)
        return self.corpus.names(text)

    def untraced(self) -> list[tuple[str, str]]:
        """(argument, text) of the call's arguments no trusted source accounts for --
        every one: what a message says steers its reader (a phishing link in a message to
        the person's own colleague is a hijack), so a body is traced like a recipient."""
        found = []
        for name in sorted(self.call.arguments):
            for text in _texts(self.call.arguments[name]):
                if not self.traceable(name, text):
                    found.append((name, text))
                    break
        return found

    def source_of(self, text: str) -> Piece | None:
        """The newest untrusted piece the text occurs in."""
        value = norm(text)
        for piece, text in zip(reversed(self.pieces), reversed(self.normed), strict=True):
            if not piece.trusted and value and value in text:
                return piece
        return None

    def newest_untrusted(self) -> Piece | None:
        return next((p for p in reversed(self.pieces) if not p.trusted), None)

    def why_untrusted(self, untraced: list[tuple[str, str]]) -> str:
        parts = []
        for name, text in untraced[:3]:
            piece = self.source_of(text)
            if piece is not None:
                parts.append(f"the {name} came from {piece.describe()}")
            else:
                parts.append(f"the {name} is not in your words or the [trusted] lists")
        newest = self.newest_untrusted()
        context = (
            f"; untrusted content ({newest.describe()}) is in this errand's context"
            if newest is not None and not any("came from" in p for p in parts)
            else ""
        )
        return "; ".join(parts) + context

    # -- P-F ------------------------------------------------------------------------------

    def carried(self) -> list[tuple[str, str]]:
        """(argument, text) of what the call carries: arguments with a data role, headers
        (names and values), a URL's host, path and query (decoded), a recipient or
        payee -- unless a URL, address or account is copied whole from a piece: that
        carries nothing of the context -- and, for a tool that declares no roles at all,
        everything."""
        roles = self.call.roles
        copied = self.normed

        def whole(value: str) -> bool:
            v = norm(value)
            return bool(v) and any(v in text for text in copied)

        out: list[tuple[str, str]] = []
        for name in sorted(self.call.arguments):
            role = roles.get(name)
            value = self.call.arguments[name]
            if role in DATA_ROLES or (role is None and not roles):
                out.extend((name, text) for text in _texts(value))
            elif role is ArgRole.headers:
                pairs = value.items() if isinstance(value, Mapping) else [(value, "")]
                out.extend((name, f"{k}: {t}") for k, v in pairs for t in _texts(v) or [""])
            elif role in (ArgRole.recipient, ArgRole.payee):
                out.extend((name, t) for t in _texts(value) if not whole(t))
            elif role is ArgRole.url and isinstance(value, str):
                try:
                    url = canonical_url(value)
                except UrlError:
                    continue
                if whole(url.text):
                    continue
                rest = unquote_plus(url.path + (f"?{url.query}" if url.query else ""))
                out.append((name, f"{url.host} {rest}"))  # (<data>.cdn.evil.example too)
        return out

    def private_carried(self) -> tuple[str, Piece] | None:
        """A private fragment some argument carries, and the piece it came from."""
        private = [
            (p, text)
            for p, text in zip(self.pieces, self.normed, strict=True)
            if p.private and p.content.provenance.kind in ("tool", "external")
        ]
        if not private:
            return None
        harmless = (
            self.corpus.text
            + "\n"
            + "\n".join(t for p, t in zip(self.pieces, self.normed, strict=True) if not p.private)
        )
        for _, carried in self.carried():
            value = norm(carried)
            for start in range(0, max(0, len(value) - MIN_FRAGMENT) + 1):
                fragment = value[start : start + MIN_FRAGMENT]
                if len(fragment) < MIN_FRAGMENT or fragment in harmless:
                    continue
                for piece, text in private:
                    if fragment in text:
                        return _grow(value, start, text), piece
        return None


def _grow(value: str, start: int, source: str) -> str:
    """The longest run of *value* from *start* that *source* contains (for the card)."""
    end = start + MIN_FRAGMENT
    while end < len(value) and value[start : end + 1] in source:
        end += 1
    fragment = value[start:end]
    return fragment if len(fragment) <= 80 else fragment[:77] + "..."


_ELSEWHERE = frozenset({ArgRole.url, ArgRole.payee, ArgRole.amount, ArgRole.command})


def _to_the_person(call: Any, settings: FlowSettings) -> bool:
    """Is *call* a mail to the person's own addresses (``own_addresses``) and nothing else:
    at least one recipient, every recipient one of them, no URL, payee or command?"""
    if not settings.own_addresses:
        return False
    own = {_own_spelling(a) for a in settings.own_addresses} - {""}
    recipients: list[str] = []
    for name, role in call.roles.items():
        value = call.arguments.get(name)
        if role is ArgRole.recipient:
            recipients += _texts(value)
        elif role in _ELSEWHERE and value not in (None, "", []):
            return False
    return bool(recipients) and all(_own_spelling(r) in own for r in recipients)


def _own_spelling(address: str) -> str:
    """*address* compared with ``own_addresses``: ASCII only, lower case ("" otherwise).
    Not casefolded: a look-alike such as ``\u212aate@x.com`` (KELVIN SIGN) casefolds to
    ``kate@x.com`` yet names another mailbox."""
    address = address.strip()
    return address.lower() if address.isascii() else ""


def flow_verdict(
    call: Any, pieces: Sequence[Piece], trusted: Trusted, settings: FlowSettings
) -> tuple[Literal["ask", "deny"], str, str] | None:
    """(decision, rule, reason) when flow control stops *call* (a PolicyCall), or None.
    Cheap when nothing is at stake: a call that reads, writes the workspace, or goes to
    an allowed place with a trusted context returns at once."""
    effect = call.effect
    if effect not in CONSEQUENTIAL and effect is not EffectClass.network:
        return None
    check = _Check(call, pieces, trusted)
    tainted = call.context.integrity is Integrity.untrusted
    outside = [d for d in check.destinations() if not check.destination_allowed(d[1], d[2])]
    found: list[tuple[Literal["ask", "deny"], str, str]] = []
    if outside:  # P-F first: the card names the data at stake
        carried = check.private_carried()
        if carried is not None:
            fragment, piece = carried
            where = ", ".join(sorted({f"{n} {t}" for n, _, t in outside}))[:200]
            why = (
                f"it would send private data from {piece.describe()} ({fragment!r}) to {where}, "
                "which is not in your words or the [trusted] lists (flow control: P-F)"
            )
            found.append((settings.private_data, "flow-private", why))
    if tainted and (effect in CONSEQUENTIAL or outside) and not _to_the_person(call, settings):
        untraced = check.untraced() if effect in CONSEQUENTIAL else [(n, t) for n, _, t in outside]
        if untraced:
            why = f"{check.why_untrusted(untraced)} (flow control: P-T)"
            found.append((settings.untrusted_control, "flow-untrusted", why))
    if not found:
        return None
    decision: Literal["ask", "deny"] = "deny" if any(d == "deny" for d, _, _ in found) else "ask"
    return decision, found[0][1], "; and ".join(why for _, _, why in found)


def without_flow(policy: Policy) -> Policy:
    """*policy* with flow control off and labels deciding nothing -- a standing rule
    applies after untrusted data as before: the negative control of ``errands eval``.
    Never used to decide a real errand."""
    from errands.policy.rules import Policy

    class _LabelBlind(Policy):
        def check(self, call: Any) -> Any:  # (a standing rule applies after untrusted data)
            trusted = Label.of(Integrity.trusted, call.context.confidentiality)
            return super().check(dataclasses.replace(call, context=trusted))

        def flow_check(self, call: Any) -> None:
            return None

    return _LabelBlind.model_validate(policy.model_dump())
