"""PURE: API keys (generation, hashing, constant-time checks) and who may do what.

Server roles: owner (everything), maintainer (create channels, act on every channel as a
maintainer), member (nothing beyond public reads). Channel roles: owner, maintainer, member.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field

ROLES = ("owner", "maintainer", "member")
KEY_PREFIX = "cs_"


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """sha256 is enough: keys are 256-bit random strings, not passwords."""
    return hashlib.sha256(key.encode()).hexdigest()


def same_hash(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


@dataclass(frozen=True)
class Identity:
    """A valid, unrevoked key and its roles."""

    key_id: int
    role: str | None  # server role
    channels: dict[str, str] = field(default_factory=dict)  # channel name -> role

    def channel_role(self, channel: str) -> str | None:
        """The effective role on a channel: the channel's own role or the server role's."""
        own = self.channels.get(channel)
        implied = self.role if self.role in ("owner", "maintainer") else None
        for role in ("owner", "maintainer", "member"):
            if role in (own, implied):
                return role
        return None


def can_create_channel(who: Identity) -> bool:
    return who.role in ("owner", "maintainer")


def can_delete_channel(who: Identity, channel: str) -> bool:
    return who.channel_role(channel) == "owner"


def can_synchronize(who: Identity, channel: str) -> bool:
    return who.channel_role(channel) in ("owner", "maintainer")


def can_read(who: Identity | None, channel: str, private: bool) -> bool:
    if not private:
        return True
    return who is not None and who.channel_role(channel) is not None
