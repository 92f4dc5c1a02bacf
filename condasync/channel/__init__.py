"""The conda channel format, pure: parsing and validating repodata, big-index views, cutting
records out of upstream's bytes, and channel URLs.

May import: models, errors. No I/O: never os, asyncio, httpx or rich, and nothing from
engine/, storage/ or serve/. Everything here is a function of its arguments.
"""
