"""The four recipes: each turns :class:`RecipeOptions` into a :class:`ScheduleRequest`
(kind, timing, prompt, tools) and says what the policy will ask of the person.

Only the options a recipe takes may be given (``--board`` to listings-monitor is refused,
naming the option); what a recipe needs and lacks is refused the same way."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

from errands.config import Settings
from errands.core.schedules import parse_duration
from errands.engine.schedules import ScheduleRequest
from errands.errors import UserError
from errands.recipes import prompts

__all__ = ["RECIPES", "Recipe", "RecipeError", "RecipeOptions"]

Notify = Literal["inbox", "email", "webhook"]


class RecipeError(UserError):
    """A recipe refused: one line naming the option (``--to: …``)."""


class RecipeOptions(BaseModel):
    """What a person gives ``errands recipe add`` (None: not given)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    url: str | None = None
    select: str | None = None
    every: str | None = None
    notify: Notify | None = None
    board: str | None = None
    token: str | None = None
    cron: str | None = None
    tz: str | None = None
    to: str | None = None
    about: str | None = None
    max_follow_ups: int | None = None
    model: str | None = None

    def given(self) -> set[str]:
        return {k for k, v in self.model_dump().items() if v is not None} - {"name", "model"}


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    usage: str
    takes: frozenset[str]  # the options it accepts
    needs: frozenset[str]  # ... and of those, the ones it must have
    build: Callable[[RecipeOptions, Settings, float], tuple[ScheduleRequest, list[str]]]
    email: Callable[[RecipeOptions], bool]  # whether it needs [email]

    def check(self, options: RecipeOptions, settings: Settings) -> None:
        extra = sorted(options.given() - self.takes)
        if extra:
            raise RecipeError(f"{_opt(extra[0])}: {self.name} does not take it ({self.usage})")
        missing = sorted(self.needs - options.given())
        if missing:
            raise RecipeError(f"{_opt(missing[0])}: {self.name} needs it ({self.usage})")
        if self.email(options) and settings.email is None:
            raise RecipeError(
                f"{self.name} sends mail, and errands.toml has no [email] section: "
                "configure your mail server first (docs/email.md), then run errands doctor"
            )


def _opt(field: str) -> str:
    return "--" + field.replace("_", "-")


def _address(value: str | None, option: str = "--to") -> str:
    text = (value or "").strip()
    local, _, domain = text.rpartition("@")
    if not local or "." not in domain or any(c in text for c in " <>,;\r\n"):
        raise RecipeError(f"{option}: {value!r} is not an email address (write name@example.com)")
    return text


def _listings(o: RecipeOptions, s: Settings, now: float) -> tuple[ScheduleRequest, list[str]]:
    notify = o.notify or "inbox"
    if notify == "email":
        to = _address(o.to)
    elif o.to is not None:
        raise RecipeError("--to: only with --notify email")
    else:
        to = None
    if notify == "webhook" and not s.notify.webhook_url:
        raise RecipeError(
            "--notify webhook: errands.toml has no [notify] webhook_url to post to (docs/server.md)"
        )
    tools = ["send_email"] if notify == "email" else []
    request = ScheduleRequest(
        name=o.name, kind="watch", url=o.url, select=o.select, every=o.every or "1h",
        text=prompts.listings_prompt(notify, to), tools=tools, model=o.model,
    )  # fmt: skip
    policy = {
        "inbox": "each errand's answer (the new listings) shows in the inbox; it calls no tool",
        "email": f"each mail to {to} is an approval card: it is made from the page "
        "(untrusted), so flow control asks even under 'always' (docs/security.md)",
        "webhook": "each errand's answer is posted to [notify] webhook_url when it finishes",
    }[notify]
    return request, [policy]


def _board(o: RecipeOptions, s: Settings, now: float) -> tuple[ScheduleRequest, list[str]]:
    from errands.engine.scheduler import secret_problem
    from errands.tools import watchcheck  # (the same network check a watch's URL gets)

    to = _address(o.to)
    try:
        board = watchcheck.validate_watch(o.board or "", None, None, s)
    except UserError as exc:
        raise RecipeError(f"--board: {str(exc).removeprefix('url: ')}") from None
    token = (o.token or "").strip().removeprefix("secret:") or None
    if o.token is not None:
        problem = secret_problem(s, token or "", board) if token else "give a secret's name"
        if problem:
            raise RecipeError(f"--token: {problem}")
    request = ScheduleRequest(
        name=o.name, kind="cron", cron=o.cron, tz=o.tz, text=prompts.board_prompt(board, to, token),
        tools=["http_request" if token else "fetch_url", "send_email"], model=o.model,
    )  # fmt: skip
    said = [
        f"each morning's mail to {to} is an approval card showing the summary; 'always' for "
        f"{to} pins the recipient, but the summary is made from the board (untrusted), so "
        "flow control still asks for each one, unless policy.toml's [flow] own_addresses "
        f"names {to} as yours (docs/recipes/board-summary.md)"
    ]
    if token:
        said.insert(
            0,
            f"the board is read with the secret {token} (http_request, auth=secret:{token}: "
            "sent only to its hosts, never shown); a request carrying a credential asks, so "
            "the first morning's read is a card -- approve it with 'always' and the later "
            "mornings read the board without asking",
        )
    return request, said


def _drafts(o: RecipeOptions, s: Settings, now: float) -> tuple[ScheduleRequest, list[str]]:
    request = ScheduleRequest(
        name=o.name, kind="cron", cron=o.cron or "0 6 * * *", tz=o.tz,
        text=prompts.drafts_prompt(), model=o.model,
        tools=["search_email", "read_email", "draft_email", "send_email"],
    )  # fmt: skip
    return request, [
        "nothing is sent by itself: each draft is a send_email approval card in the inbox "
        "(approve sends it in its thread, deny discards it, edit then send)"
    ]


def _chase(o: RecipeOptions, s: Settings, now: float) -> tuple[ScheduleRequest, list[str]]:
    to = _address(o.to)
    about = " ".join((o.about or "").split())
    if not about:
        raise RecipeError("--about: say what to chase the vendor about")
    try:
        every = parse_duration(o.every or "2d", "every")
    except UserError as exc:
        raise RecipeError(f"--every: {str(exc).removeprefix('every: ')}") from None
    most = 3 if o.max_follow_ups is None else o.max_follow_ups
    if not 0 <= most <= 20:
        raise RecipeError("--max-follow-ups: give 0 to 20")
    if s.email is not None and not s.email.imap_url:
        raise RecipeError(
            "vendor-chase waits for the vendor's reply, and [email] has no imap_url to read "
            "it from (docs/email.md)"
        )
    start = datetime.fromtimestamp(int(now) + 60, UTC).isoformat()
    request = ScheduleRequest(
        name=o.name, kind="at", at=start, text=prompts.chase_prompt(to, about, every, most),
        tools=["send_email", "read_email", "search_email", "wait"], model=o.model,
    )  # fmt: skip
    return request, [
        f"the first mail to {to} and each follow-up are approval cards; a reply from the "
        "vendor stops the chase and the errand's answer tells you what they said (at once "
        "when errands up reads the mail: their authenticated reply in the thread wakes it, "
        "docs/email.md; else at the next deadline)"
    ]


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            "listings-monitor",
            "watch a listings page; an errand gets only the new listings and tells you "
            "(an unchanged page costs nothing)",
            "--url URL [--select CSS] [--every 1h] [--notify inbox|email|webhook] [--to ADDRESS]",
            frozenset({"url", "select", "every", "notify", "to"}),
            frozenset({"url"}),
            _listings,
            lambda o: o.notify == "email",
        ),
        Recipe(
            "board-summary",
            "every weekday morning, a summary of what changed on your project board, mailed",
            '--board URL [--token NAME] --cron "0 8 * * 1-5" [--tz ZONE] --to ADDRESS',
            frozenset({"board", "token", "cron", "tz", "to"}),
            frozenset({"board", "cron", "to"}),
            _board,
            lambda o: True,
        ),
        Recipe(
            "overnight-drafts",
            "reads the mail that came since the last run and drafts replies; each is an "
            "approval card in the morning",
            '[--cron "0 6 * * *"] [--tz ZONE]',
            frozenset({"cron", "tz"}),
            frozenset(),
            _drafts,
            lambda o: True,
        ),
        Recipe(
            "vendor-chase",
            "mails a vendor, waits for a reply in that thread, follows up politely, and "
            "stops and tells you when they answer",
            "--to ADDRESS --about TEXT [--every 2d] [--max-follow-ups 3]",
            frozenset({"to", "about", "every", "max_follow_ups"}),
            frozenset({"to", "about"}),
            _chase,
            lambda o: True,
        ),
    )
}
