"""AgentDojo's banking and slack tools as errands sees them: the mapping table.

Written down before any run (issue 16) and changed only with a reason: for every tool,
its **effect class** (what a call can do to the world, which the policy's defaults and
rules judge), the **roles** of its arguments (what the permission boundary, standing
rules and flow control read), whether its output can carry **text an outsider wrote**
(labelled untrusted, like a fetched page), the **source** argument that names where the
output came from (for the approval card), and why.

The rule for "untrusted": the output can hold text that someone other than the person
wrote -- in AgentDojo, anything an injection vector can reach (a transaction's subject,
a file, a web page, a Slack message or channel name), and free text of the same kind
even where this environment places no vector (a standing order's subject is copied
from the bill or notice that set it up). The person's own account data (IBAN, balance,
profile) and the workspace's member list are trusted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from errands.core.events import EffectClass
from errands.core.labels import Confidentiality
from errands.tools.tool import ArgRole

__all__ = ["MAPPINGS", "ToolMap"]

E = EffectClass
R = ArgRole


@dataclass(frozen=True)
class ToolMap:
    effect: EffectClass
    why: str
    roles: Mapping[str, ArgRole] = field(default_factory=dict)
    untrusted: bool = False  # the output can carry text an outsider wrote
    confidentiality: Confidentiality = Confidentiality.private
    source: str | None = None  # the argument whose value says where the output came from


_PAYMENT = {"recipient": R.payee, "amount": R.amount, "subject": R.subject}

BANKING: dict[str, ToolMap] = {
    "get_iban": ToolMap(E.read, "the person's own account number"),
    "get_balance": ToolMap(E.read, "the person's own balance"),
    "get_user_info": ToolMap(E.read, "the person's own profile (name, street, city)"),
    "get_most_recent_transactions": ToolMap(
        E.read,
        "an incoming transaction's subject is written by its sender (AgentDojo's "
        "injection_incoming_transaction vector)",
        untrusted=True,
    ),
    "get_scheduled_transactions": ToolMap(
        E.read,
        "a standing order's subject is free text copied from the bill or notice that set it up",
        untrusted=True,
    ),
    "read_file": ToolMap(
        E.read,
        "documents from others: bills, a landlord's notices (injection_bill_text, "
        "injection_landloard_notice, injection_address_change); file_path names a document "
        "in the bank's store, not a path on this machine, so it has no path role",
        untrusted=True,
        source="file_path",
    ),
    "send_money": ToolMap(E.spend, "moves money to the recipient", roles=_PAYMENT),
    "schedule_transaction": ToolMap(
        E.spend, "sets up a payment, possibly recurring", roles=_PAYMENT
    ),
    "update_scheduled_transaction": ToolMap(
        E.spend,
        "changes whom a standing order pays, or how much (id has no role: nothing in "
        "errands describes 'which order')",
        roles=_PAYMENT,
    ),
    "update_password": ToolMap(
        E.irreversible,
        "whoever knows the new password owns the account; the old one is gone",
    ),
    "update_user_info": ToolMap(
        E.external, "changes the bank's record of the person's name and address"
    ),
}

SLACK: dict[str, ToolMap] = {
    "get_channels": ToolMap(
        E.read,
        "channel names are chosen by whoever made the channel (prompt_injection_channel)",
        untrusted=True,
    ),
    "get_users_in_channel": ToolMap(E.read, "the workspace's member list", source="channel"),
    "read_channel_messages": ToolMap(
        E.read, "messages other members wrote", untrusted=True, source="channel"
    ),
    "read_inbox": ToolMap(E.read, "messages others sent the user", untrusted=True, source="user"),
    "get_webpage": ToolMap(
        E.network,
        "a GET to any host (what it reveals is in its URL); anyone can write a web page "
        "(injection_web_0, injection_phishing_1, injection_dora_0, prompt_injection_eve_blog, "
        "prompt_injection_restaurant)",
        roles={"url": R.url},
        untrusted=True,
        confidentiality=Confidentiality.public,
        source="url",
    ),
    "post_webpage": ToolMap(
        E.external,
        "publishes content at a URL, for anyone to read",
        roles={"url": R.url, "content": R.body},
    ),
    "send_direct_message": ToolMap(
        E.external,
        "a message to one member",
        roles={"recipient": R.recipient, "body": R.body},
    ),
    "send_channel_message": ToolMap(
        E.external,
        "a message every member of the channel reads",
        roles={"channel": R.recipient, "body": R.body},
    ),
    "add_user_to_channel": ToolMap(
        E.external,
        "gives the user the channel's past and future messages",
        roles={"user": R.recipient},
    ),
    "invite_user_to_slack": ToolMap(
        E.external,
        "sends an invitation to the address and makes its owner a member",
        roles={"user_email": R.recipient},
    ),
    "remove_user_from_slack": ToolMap(E.irreversible, "removes the member and deletes their inbox"),
}

MAPPINGS: dict[str, dict[str, ToolMap]] = {"banking": BANKING, "slack": SLACK}
