"""Replies in a form tests compare: errors as ("error", text), nested lists kept."""

from __future__ import annotations


def plain(reply):
    if isinstance(reply, Exception):
        return ("error", str(reply))
    if isinstance(reply, list):
        return [plain(x) for x in reply]
    return reply
