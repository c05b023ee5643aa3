"""The task collection: the same for ``inv``, ``parallel-autopilot`` and ``fab``.

Each namespace lives in its own module; this one only assembles them.
"""

from .edge import Namespace
from . import issues

ns = Namespace()
ns.add_collection(issues.ns)
from . import worktrees  # noqa: E402

ns.add_collection(worktrees.ns)
