"""The owner socket's HTTP API: listener, connection guard, routes and OpenAPI."""
