"""The duty-officer console: the operations API, its web assets, access tokens and /metrics.

It reads the stores only through the readers their owners offer and acts on the response
chain only through requests, like any other client.
"""
