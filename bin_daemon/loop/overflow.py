"""Full bins: an item whose bin is full goes to that bin's overflow instead (issue 16).

Applied to the policy's decision (``Service._decide``); the record's ``reason`` keeps the policy's reason and says
where the item went instead and why, e.g. ``label; bin 'glass' is full -> 'landfill'``.
"""

from __future__ import annotations

from collections.abc import Mapping

from bin_daemon.loop.policy import BinChoice


def route_around_full(
    choice: BinChoice, *, full: set[str], overflow: Mapping[str, str], fallback_bin: str
) -> BinChoice:
    """The same choice, or (its bin being full) the first bin along the overflow chain that
    is not full. If every bin on the way is full the item goes to the fallback bin anyway:
    it is on the flap and must go somewhere."""
    if choice.bin not in full:
        return choice
    path = [choice.bin]
    while path[-1] in full:
        after = overflow.get(path[-1], fallback_bin)
        if after in path:  # a cycle: try the fallback bin, unless it was on the way already
            if fallback_bin in path:
                break
            after = fallback_bin
        path.append(after)
    target = path[-1]
    if len(path) == 1:  # the fallback bin, full, with no overflow of its own: it keeps them
        why = f"{choice.reason}; bin '{target}' is full but has no overflow bin"
    elif target in full:
        chain = ", ".join(f"'{name}'" for name in path)
        why = f"{choice.reason}; every bin on the way is full ({chain}): fallback '{fallback_bin}'"
        target = fallback_bin
    elif len(path) == 2:
        why = f"{choice.reason}; bin '{path[0]}' is full -> '{target}'"
    else:
        chain = ", ".join(f"'{name}'" for name in path[:-1])
        why = f"{choice.reason}; bins {chain} are full -> '{target}'"
    return BinChoice(target, choice.unsure, why)
