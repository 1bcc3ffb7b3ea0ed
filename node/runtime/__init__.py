"""`fednode run`, the composition root: the process (process.py), its health (health.py), the admin
socket server (admin.py: the OPS registry and serve), the services it hosts (services/, listed in
services/__init__.py in start order), the configuration check (configcheck.py), logging.

Rules: imports anything below (app, features, link, adapters, core); never node.interfaces (the CLI
and the admin ops register themselves from above). Asyncio shells only: the rules live below.
"""
