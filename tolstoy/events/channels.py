"""Every bus channel name, defined once (STYLE.md convention 6).

Redis pub/sub has one channel per organization, so a gateway subscribes only to
the organizations its clients watch. A deployment-wide ``prefix`` (the ``?prefix=``
of the bus URL) keeps several deployments, or concurrent test runs, apart on one
Redis.
"""

from __future__ import annotations

ORG_CHANNEL = "{prefix}tolstoy:org:{org_id}"
"""The channel carrying every committed event of one organization."""


def org_channel(prefix: str, org_id: str) -> str:
    """The bus channel of ``org_id``."""
    return ORG_CHANNEL.format(prefix=prefix, org_id=org_id)


def org_of_channel(prefix: str, channel: str) -> str | None:
    """The organization a channel name belongs to, or None when it is not one of ours."""
    head = f"{prefix}tolstoy:org:"
    if not channel.startswith(head):
        return None
    return channel[len(head) :] or None
