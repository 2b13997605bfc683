"""Prometheus metrics: the instruments every process updates, the multiprocess directory they are written to, and
the collectors the API's /metrics reads at scrape time (SQL job counts, the broker's queue depth)."""
