"""Who a mail is from, believed only as far as the mail server vouches for it.

A ``From`` header is whatever the sender typed. A mail counts as from an allowed sender
only when an ``Authentication-Results`` header (RFC 8601, parsed by ``authres``) from
the configured ``authserv_id`` -- the mail server that received it -- shows a DKIM pass
for the From domain (``header.d``) or an SPF pass for it (``smtp.mailfrom``): *aligned*,
the authenticated domain being the From domain or one under the same parent. Refused:
several From addresses; no such header; a header from another server (anyone can write
one); *two* headers claiming the configured server (one was written by the sender: the
server adds one, and should strip look-alikes, RFC 8601 §5); a header that does not parse;
any pass that is not aligned.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import Message

import authres

from errands.mailconfig import EmailSettings
from errands.tools.email.message import addresses

__all__ = ["SenderCheck", "Verdict", "aligned"]


@dataclass(frozen=True)
class Verdict:
    sender: str | None  # the authenticated, allowed address; None: refused
    reason: str


def _domain(address: str) -> str:
    return address.rsplit("@", 1)[-1].strip().rstrip(".").lower()


def aligned(authenticated: str, from_domain: str) -> bool:
    """Relaxed alignment: the same domain, or one under the other where the shorter has
    at least two labels (``mail.example.com`` and ``example.com``; never ``com``)."""
    a, f = authenticated.strip().rstrip(".").lower(), from_domain
    if not a or not f:
        return False
    if a == f:
        return True
    shorter, longer = (a, f) if len(a) < len(f) else (f, a)
    return shorter.count(".") >= 1 and longer.endswith("." + shorter)


class SenderCheck:
    """Is a mail from an allowed sender, as the configured server vouches?"""

    def __init__(self, settings: EmailSettings) -> None:
        self.settings = settings
        self.authserv_id = settings.authserv_id.strip().lower()

    def check(self, msg: Message) -> Verdict:
        froms = addresses(msg, "From")
        if len(froms) != 1:
            return Verdict(None, f"{len(froms)} From addresses (one is needed)")
        sender = froms[0]
        if not self.allowed(sender):
            return Verdict(None, f"{sender} is not an allowed sender")
        why = self.authenticated(msg, sender)
        return Verdict(sender, "authenticated") if why is None else Verdict(None, why)

    def allowed(self, sender: str) -> bool:
        allowed = self.settings.allowed_senders
        return sender in allowed or ("@" + _domain(sender)) in allowed

    def authenticated(self, msg: Message, sender: str) -> str | None:
        """None when the configured server vouches for *sender*'s domain; else why not."""
        ours = []
        for value in msg.get_all("Authentication-Results") or []:
            try:
                header = authres.AuthenticationResultsHeader.parse_value(
                    " ".join(str(value).split())
                )
            except (authres.AuthResError, ValueError, IndexError, AttributeError):
                if self.authserv_id in str(value).lower():
                    return "an Authentication-Results header from the server does not parse"
                continue
            if str(header.authserv_id).strip().lower() == self.authserv_id:
                ours.append(header)
        if not ours:
            return f"no Authentication-Results from {self.settings.authserv_id}"
        if len(ours) > 1:
            return (
                f"{len(ours)} Authentication-Results headers claim to be from "
                f"{self.settings.authserv_id} (the sender wrote one)"
            )
        domain = _domain(sender)
        for result in ours[0].results:
            method, outcome = str(result.method).lower(), str(result.result).lower()
            if outcome != "pass":
                continue
            if method == "dkim" and aligned(str(getattr(result, "header_d", "") or ""), domain):
                return None
            if method == "spf" and aligned(
                _domain(str(getattr(result, "smtp_mailfrom", "") or "")), domain
            ):
                return None
        return f"no aligned DKIM or SPF pass for {domain} from {self.settings.authserv_id}"
