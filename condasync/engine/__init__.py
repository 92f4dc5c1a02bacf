"""The jobs: one mirror run (sync: the sequence of DESIGN.md §2), and what it is made of
(fetch, transport, download, plan, filters, publish, state), plus verify and index.

May import: channel/, storage/, models, errors. Never serve/ or the CLI; progress goes out as
events to a listener the caller passes in.
"""
