"""The agent-socket routes, one module per resource, on the owner socket's machinery.

Each resource declares its :class:`pacd.api.route.Route` entries next to its
handlers; :class:`pacd.agents.server.AgentRoutes` serves them through the same
:class:`pacd.api.wrapper.RouteWrapper` as the owner socket. A handler records
its decision through ``call.decision`` at the moment it is taken — a write is
on record before it is made, a read's value leaves only after its entry — and
the wrapper records any refusal the handler did not.
"""
