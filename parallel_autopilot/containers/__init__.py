"""Containers: what the agents run in and how they are started.

- :mod:`.compose`: the one place that talks to Docker Compose (v2 or v1);
- :mod:`.provision`: what a container gets (environment, credentials, files, ownership);
- :mod:`.queueaccess`: how a container reaches a PostgreSQL queue;
- :mod:`.daemon`: the one Docker SDK client;
- :mod:`.image`: the agent image, built offline if it must be;
- :mod:`.agentcli`: the pinned Codex CLI and Claude Code, staged into the image.
"""
