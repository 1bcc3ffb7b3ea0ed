"""The supervision desk (监察工作台): the web console of supervisors, department supervision offices and IT
staff, and its JSON API (/api/v1/), served by `fednode run` when ``[desk] listen`` is set.

Rules of this package:
- An interface like the CLI: each route parses, calls one node.app use case, renders. Who may do what
  is ``may()``'s (node/features/people/roles.py), asked by the use cases; a page only hides what
  ``may()`` refuses, the act itself is decided again where it runs.
- Server-rendered zh-CN pages (Jinja2, autoescape), no build step; static/desk.js is a small progressive
  enhancement (the charts). Apache ECharts is vendored in static/vendor/echarts/ with its licence: no
  CDN, the networks are closed.
- Security (web.py): the session cookie is node/app/people.py's session token (HttpOnly, SameSite=Strict,
  Secure under TLS), a synchronizer CSRF token on every form, a Content-Security-Policy without inline
  script or style, idle timeout, sign-in rate limit + node/app/people.py's lockout, every act recorded
  under the person by node/app.
- Never blocks the node's loop: reads on the desk's reader threads, acts through the admin ops on the
  store thread (backend.py).
- Imports every layer below; registers its app on node.runtime.services.desk on import (the CLI's main
  imports this package before `run`).
"""

from node.interfaces.desk.app import make_app
from node.runtime.services.desk import register_app

register_app(make_app)
