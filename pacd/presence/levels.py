"""Which presence evidence reaches which security level (DESIGN.md §2).

| level       | evidence                                                        |
|-------------|-----------------------------------------------------------------|
| basic       | none beyond the owner socket (peer uid, unlocked keychain)     |
| enhanced    | a FIDO2 assertion with UP (touch)                               |
| biometric   | a FIDO2 assertion with UV, or a verified platform biometric     |
| carbonProof | a UV assertion over the digest of this exact action, fresh, once |

Which level an *action* needs is decided by ``pacd.core.rules.required_level``;
this module only maps evidence to levels and tells the daemon which ceremony
reaches a requirement.
"""

from __future__ import annotations

from dataclasses import dataclass

from pacd.core.models import SecurityLevel
from pacd.core.rules import Action, required_level
from pacd.errors import PresenceRequired
from pacd.presence.evidence import VerifiedPresence

# Methods whose proof is a signature over the challenge; only those can bind a
# proof to one action (fprintd answers "match", it signs nothing).
SIGNING_METHODS = frozenset({"fido2", "touchid", "windows-hello"})


@dataclass(frozen=True)
class Ceremony:
    """What the daemon must ask for to reach ``level``."""

    level: SecurityLevel
    #: a presence ceremony is needed at all (basic needs none)
    needed: bool
    #: the assertion must carry UV (PIN or biometric on the key, or a platform biometric)
    require_uv: bool
    #: the challenge must be the digest of the action itself, fresh and single-use
    bound_to_action: bool


def level_for(verified: VerifiedPresence | None) -> SecurityLevel:
    """The level a piece of evidence proves: never more than its facts support,
    never more than it claims."""
    if verified is None or not verified.user_present:
        return SecurityLevel.basic
    if not verified.user_verified:
        derived = SecurityLevel.enhanced
    elif (
        verified.level == SecurityLevel.carbonProof
        and verified.challenge is not None
        and verified.method in SIGNING_METHODS
    ):
        derived = SecurityLevel.carbonProof
    else:
        derived = SecurityLevel.biometric
    return derived if derived.rank <= verified.level.rank else verified.level


def ceremony_for(level: SecurityLevel | str) -> Ceremony:
    level = SecurityLevel(level)
    return Ceremony(
        level=level,
        needed=level != SecurityLevel.basic,
        require_uv=level.rank >= SecurityLevel.biometric.rank,
        bound_to_action=level == SecurityLevel.carbonProof,
    )


def ceremony_for_action(action: Action) -> Ceremony:
    return ceremony_for(required_level(action))


def allows(verified: VerifiedPresence | None, action: Action) -> bool:
    return level_for(verified).satisfies(required_level(action))


def require(level: SecurityLevel, action: Action) -> None:
    """Raise ``PresenceRequired`` (with the level needed) unless ``level`` suffices."""
    needed = required_level(action)
    if not level.satisfies(needed):
        raise PresenceRequired(
            f"{action.value} needs presence level {needed.value}; you proved {level.value}",
            required_level=needed.value,
        )
