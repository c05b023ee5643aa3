"""``gui``: serve the Parallel Agents web pane (same settings and library as the tasks)."""

from __future__ import annotations

from .edge import Namespace, echo, fleet_of, require_extra, task


@task(default=True, auto_shortflags=False, help={
    "port": "TCP port (default autopilot.gui_port, 8787)",
    "host": "address to listen on (default autopilot.gui_host, 127.0.0.1); a non-local one needs --public and --token",
    "open_": "open the page in the default browser once the server is up",
    "token": "require this secret on every request (needed with --public; the printed URL carries it)",
    "public": "allow listening on a non-local address (with --token)",
})
def serve(c, port=None, host=None, open_=False, token=None, public=False):
    """Serve the Parallel Agents pane on http://127.0.0.1:8787/ until Ctrl-C."""
    with require_extra("gui", "`parallel-autopilot gui`"):
        from ..gui import app  # FastAPI/uvicorn only when the GUI is wanted: `inv --list` works without

    the_fleet = fleet_of(c)
    s = the_fleet.settings
    if s.queue or s.db_path.exists():
        the_fleet.store  # noqa: B018 - a damaged database is one line now, not a red banner later
    try:
        app.serve(s, host=host or s.gui_host, port=int(port if port is not None else s.gui_port),
                  token=token, public=public, open_browser=open_, fleet=the_fleet,
                  echo=lambda line: echo(line, flush=True))  # the URL shows at once, even through a pipe
    except KeyboardInterrupt:
        echo("stopped", flush=True)  # Ctrl-C is how it is stopped: exit 0, not "interrupted"


ns = Namespace("gui")
ns.add_task(serve)
