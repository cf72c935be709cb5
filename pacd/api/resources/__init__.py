"""The owner socket's routes, one module per resource.

Each resource is a small class whose ``routes()`` declares its :class:`Route`
entries — path, level, audit action and durability class — next to the
handlers they name. The daemon assembles them (:func:`pacd.daemon.owner_routes`);
the server serves exactly that list and the OpenAPI document describes it.
"""
