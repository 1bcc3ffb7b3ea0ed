"""Interfaces: the CLI (cli/) and the admin socket's ops (admin/); later the desk. Parse, call ONE
node.app (or runtime service) function, render.

Rules: may import every layer; nothing imports node.interfaces (except node/interfaces/cli/__main__.py).
"""
