"""Jupyter server extension: REST and WebSocket API of the market, auth, agent endpoints."""
