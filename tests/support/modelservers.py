"""The scripted model servers of the real-CLI tests (tests/containers/test_agent_clis_real.py).

One implementation, shared with ``inv bench --scenarios agents``: it lives in
parallel_autopilot/bench/modelservers.py (standard library only).
"""

from parallel_autopilot.bench.modelservers import (USAGE_IN, USAGE_OUT, MessagesServer, ResponsesServer,  # noqa: F401
                                                   ScriptedServer, default_command)

__all__ = ["USAGE_IN", "USAGE_OUT", "MessagesServer", "ResponsesServer", "ScriptedServer", "default_command"]
