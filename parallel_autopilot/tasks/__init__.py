"""The task collection: the same for ``inv``, ``parallel-autopilot`` and ``fab``.

Each namespace lives in its own module; this one only assembles them.
"""

from . import issues
from .edge import Namespace

ns = Namespace()
ns.add_collection(issues.ns)
from . import worktrees  # noqa: E402

ns.add_collection(worktrees.ns)
from . import bench  # noqa: E402

ns.add_collection(bench.ns)
from . import gui  # noqa: E402

ns.add_collection(gui.ns)
from . import agents, logs, root

ns.add_collection(agents.ns)
ns.add_collection(logs.ns)
for _task in (root.build, root.cleanup, root.demo, root.doctor):
    ns.add_task(_task)
from . import remote  # noqa: E402

ns.add_collection(remote.ns)
from ..config import invoke_defaults  # noqa: E402

# invoke maps INVOKE_AUTOPILOT_<KEY> variables only onto keys it knows
ns.configure({"autopilot": invoke_defaults()})
