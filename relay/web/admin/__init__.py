"""admin: the HTTP API's routes, by topic, and what every request passes first (gate,
keys, outage). relay.web.app builds the app from them and the console.

Nothing is imported here: FastAPI is a large import, and relayctl, a client of the API,
needs none of it.
"""
