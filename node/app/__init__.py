"""The use cases: one function per thing a person can do (issue a ticket, handle an alert, import the
calendar, rotate a key...). CLI handlers, admin ops and (later) the desk call these and nothing else.

Rules: imports node.core, node.link, node.features, adapters; never node.runtime or node.interfaces.
"""
