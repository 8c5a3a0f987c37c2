"""bgplb: load balancing without load balancers.

Servers announce their service addresses over BGP while healthy; the router spreads clients
across them with ECMP. See README.md for the roles (agent, router, demo/lab).
"""

__version__ = "0.1.0"
