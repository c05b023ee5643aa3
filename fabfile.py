"""fab entry point: every task of `inv --list`, run on the workstation given with -H.

    fab -H workstation agents.start --n 5    # on the workstation, its Docker, its database
    fab -H a,b agents.status                  # one table for both hosts
    fab -H workstation remote.setup           # first install there (remote.sync, remote.gui too)
    fab agents.status                         # no host (and no autopilot.remote_hosts): local

fabric.yaml next to this file installs the executor that gives a task all hosts at once.
"""

from parallel_autopilot.tasks.remote import fab_namespace

ns = fab_namespace()
