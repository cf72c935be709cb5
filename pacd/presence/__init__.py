"""Owner presence: enrolment, FIDO2 and platform biometrics, security levels, tokens.

The daemon side (relying party, verifiers, tokens) and the client side
(``pacd.presence.client``: the ceremony the CLI and tray run) live here; the
HTTP routes that expose them belong to the API layer.
"""
