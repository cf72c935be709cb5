"""Agent sockets: one HTTP server per running agent, and the agents' durable inboxes.

``server`` serves the agent routes of API.md on each agent's own socket (the
socket is the identity), ``inbox`` keeps messages between agents until the
recipient has taken them.
"""
