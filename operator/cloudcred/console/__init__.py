"""``cloudcred console``: the Cloud Credentials page in a browser, served on loopback.

- ``cache``: what the page shows, fed by LIST+WATCH with the user's own identity;
- ``views``: pure functions from cached objects to rows, filters, sorting, words;
- ``security``: the one-time login token, the session cookie, CSRF, the headers;
- ``server``: the aiohttp application and ``serve`` (what the CLI runs).

Templates (Jinja2, autoescaped) and static assets ship in the package: nothing loads
from another origin.
"""
