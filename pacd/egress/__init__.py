"""pacd's egress proxy: the only way out for agents whose policy allows external APIs.

Such an agent's container has no network interface but loopback; the daemon
binds a listener on ``127.0.0.1:3128`` inside the container's network
namespace (:mod:`pacd.egress.netns`) and serves it with :class:`EgressProxy`
(:mod:`pacd.egress.proxy`), which allows only the policy's trusted domains on
its allowed ports (rules in :mod:`pacd.core.egress`) and audits each connection.
"""
