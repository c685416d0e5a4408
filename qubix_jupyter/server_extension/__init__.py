"""Jupyter server extension: REST and WebSocket API of the market, auth, agent endpoints.

``app.QubixExtension`` is the ExtensionApp (traitlets config; services built once at start and
kept in the tornado settings); ``routes.ROUTES`` is the route table that ``handlers`` serves under
``{base_url}qubix/api/`` and ``openapi`` documents; ``auth`` holds wallet login, bearer tokens and
the rate limit; ``events`` the WebSocket event hub.
"""
