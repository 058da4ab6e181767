"""Control plane: resources, validation, TwiML, status callbacks and the store.

One job per module, none of which needs the media engine:

- :mod:`.errors`     ApiError and the error-code registry (docs/api-errors.md)
- :mod:`.sids`       SID generation and validation
- :mod:`.timefmt`    RFC 2822 (resources) and ISO 8601 (callback Timestamp) formatting
- :mod:`.forms`      Siprec / Recording form validation, the forked-stream budget
- :mod:`.twiml`      ``<Start>/<Stop><Siprec>`` parsing and the stateful replay check
- :mod:`.signature`  X-Twilio-Signature and signed request preparation
- :mod:`.events`     status-callback events and their parameter lists
- :mod:`.callbacks`  asynchronous per-resource FIFO delivery with retries
- :mod:`.store`      SQLite store and crash reconciliation (blocking + asyncio face)
- :mod:`.outbox`     persist-then-send glue between the store and the dispatcher
- :mod:`.resources`  JSON renderers and list pages

Nothing is re-exported here, so importing one module never imports aiohttp or sqlite3
for a caller that only needs, say, form validation.
"""
