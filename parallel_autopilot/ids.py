"""Agent ids: ``agent-001`` .. ``agent-NNN``, always zero-padded to three digits.

``1``, ``01``, ``001``, ``agent-1`` and ``agent-001`` all name agent-001; anything
else (``../x``, ``001;rm``, ``0``) is refused. Standard library only.
"""

import re

from .errors import InvalidAgentCount, InvalidAgentId

_ID = re.compile(r"^(?:agent-?)?0*([1-9][0-9]{0,2})$")
MAX_ID = 999


def agent_id(value) -> str:
    """Return the canonical ``agent-NNN`` for any accepted spelling of an id."""
    match = _ID.match(str(value).strip())
    if not match:
        raise InvalidAgentId(
            f"invalid agent id {str(value)!r}: use a number like 1, 01, 001 or agent-001"
        )
    return f"agent-{int(match.group(1)):03d}"


def agent_number(value) -> str:
    """Return the zero-padded number of an agent id: ``agent-007`` -> ``007``."""
    return agent_id(value)[len("agent-"):]


def agent_branch(value) -> str:
    """Return the agent's own branch: ``agent-007`` -> ``agent/007``."""
    return f"agent/{agent_number(value)}"


def agent_ids(n: int) -> list[str]:
    """Return ``agent-001`` .. ``agent-00n``."""
    return [agent_id(i) for i in range(1, n + 1)]


def agent_count(value, maximum: int) -> int:
    """A count of agents as given by a user (``--n``): an int in 1..maximum, or InvalidAgentCount."""
    if value is None:
        raise InvalidAgentCount(f"how many agents? give --n N with N from 1 to {maximum}")
    text = str(value).strip()
    try:
        n = int(text)
    except ValueError:
        raise InvalidAgentCount(
            f"agent count {text!r} is not a number: give --n N with N from 1 to {maximum}") from None
    if not 1 <= n <= maximum:
        raise InvalidAgentCount(f"agent count {n} is out of range: give --n N with N from 1 to {maximum} "
                                "on this machine (autopilot.max_agents sets the maximum)")
    return n
