"""The prefixes of the market's own credentials, which the market and providers both read.

A prefix says what a token is in a log line or a misdirected header, and lets a provider
refuse a string that cannot be the token it was asked for before sending it anywhere.
"""

from __future__ import annotations

#: A provider's worker token, issued by ``providers/quick-register``.
WORKER_TOKEN_PREFIX = "qxw_"
#: A user's provisioning token, which registers providers for its owner and nothing else.
PROVISION_TOKEN_PREFIX = "qxp_"
