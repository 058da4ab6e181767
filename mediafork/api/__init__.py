"""HTTP API (Twilio-compatible REST + host call API) and the msgpack control socket.

    service = ControlService(config, engine=engine, store=store)
    app = build_app(service)
"""

from .app import ROUTES, SERVICE_KEY, build_app

__all__ = ["ROUTES", "SERVICE_KEY", "build_app"]
