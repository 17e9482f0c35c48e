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
_HOSTISH = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")
_URL = re.compile(r"https?://[^\s<>\"'`]+")
_EMAIL = re.compile(r"[^\s@<>(),;:\"']+@[^\s@<>(),;:\"']+")


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


def norm(text: str) -> str:
    return _SPACE.sub(" ", text).strip().casefold()


@dataclass
class _Corpus:
    """The trusted text of a context, normalised once per check (and only if needed):
    the host names it mentions, the origins (host and port) of the URLs it spells out,
    and the addresses it names."""

    text: str
    hosts: set[str]
    origins: set[tuple[str, int | None]]
    emails: set[str]

    @classmethod
    def of(cls, pieces: Iterable[Piece]) -> _Corpus:
        # the person's words and errands' own (a schedule's configuration); never a
        # tool's output, nor the model's (derived: it may restate what it read)
        texts = [
            p.content.text
            for p in pieces
            if p.trusted and p.content.provenance.kind in ("user", "system")
        ]
        text = norm("\n".join(texts))
        hosts = set(_HOSTISH.findall(text))
        origins = set()
        for written in _URL.findall(text):
            try:
                url = canonical_url(written.rstrip(".,;:!?)]}>'\""))
            except UrlError:
                continue
            origins.add((url.host, url.port))
        emails = {e.strip(".") for e in _EMAIL.findall(text)}
        return cls(text, hosts, origins, emails)


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

    @property
    def corpus(self) -> _Corpus:
        if self._corpus is None:
            self._corpus = _Corpus.of(self.pieces)
        return self._corpus

    # -- destinations -------------------------------------------------------------------

    def destination_allowed(self, role: ArgRole, value: str) -> bool:
        if role is ArgRole.url:
            try:
                url = canonical_url(value)
            except UrlError:
                return False
            return (
                _under(url.host, self.trusted.domains)
                or (url.host, url.port) in self.corpus.origins
                or _under(url.host, self.corpus.hosts)
            )
        if role is ArgRole.recipient:
            address = value.strip().casefold()
            listed = {r.strip().casefold() for r in self.trusted.recipients}
            domain = address.rpartition("@")[2]
            return (
                address in listed
                or f"@{domain}" in listed
                or _under(domain, self.trusted.domains)
                or address in self.corpus.emails
                or (len(address) >= 3 and address in self.corpus.text)
            )
        if role is ArgRole.payee:
            payee = norm(value)
            return payee in {norm(p) for p in self.trusted.payees} or (
                len(payee) >= 3 and payee in self.corpus.text
            )
        return False

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
            return self.destination_allowed(role, text)
        if role is ArgRole.method:
            return True  # (the method is the effect class's business)
        value = norm(text)
        return not value or value in self.corpus.text

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
        for piece in reversed(self.pieces):
            if not piece.trusted and value and value in norm(piece.content.text):
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
        """(argument, text) of what the call carries: arguments with a data role, headers,
        a URL's path and query (not a link copied whole from a piece: it carries nothing
        of the context), and -- for a tool that declares no roles at all -- everything."""
        roles = self.call.roles
        out: list[tuple[str, str]] = []
        for name in sorted(self.call.arguments):
            role = roles.get(name)
            value = self.call.arguments[name]
            if role in DATA_ROLES or role is ArgRole.headers or (role is None and not roles):
                out.extend((name, text) for text in _texts(value))
            elif role is ArgRole.url and isinstance(value, str):
                try:
                    url = canonical_url(value)
                except UrlError:
                    continue
                link = norm(url.text)
                if any(link in norm(p.content.text) for p in self.pieces):
                    continue
                rest = url.path + (f"?{url.query}" if url.query else "")
                out.append((name, url.host.partition(".")[0] + " " + rest))
        return out

    def private_carried(self) -> tuple[str, Piece] | None:
        """A private fragment some argument carries, and the piece it came from."""
        private = [
            (p, norm(p.content.text))
            for p in self.pieces
            if p.private and p.content.provenance.kind in ("tool", "external")
        ]
        if not private:
            return None
        harmless = (
            self.corpus.text
            + "\n"
            + "\n".join(norm(p.content.text) for p in self.pieces if not p.private)
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
    if tainted and (effect in CONSEQUENTIAL or outside):
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
