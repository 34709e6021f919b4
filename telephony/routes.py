"""What a route adds to its calls beyond the agent: the announcement played before the agent starts."""

from __future__ import annotations

from agents.session import Announcement
from telephony.config import AnnouncementConfig, Config


def _announcement(a: AnnouncementConfig) -> Announcement:
    return Announcement(a.text, a.voice, a.consent_key, a.timeout_s, a.early_media)


def announcements(config: Config) -> list[Announcement]:
    """Every route's announcement, to render once at start-up."""
    return [_announcement(r.announcement) for r in config.routes if r.announcement is not None]


def announcement_for(config: Config, called: str) -> Announcement | None:
    """The announcement of the route a called number takes, if it has one."""
    route = config.route_for(called)
    return None if route is None or route.announcement is None else _announcement(route.announcement)
