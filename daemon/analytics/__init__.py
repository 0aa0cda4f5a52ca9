"""Zones and lines that turn tracks into events: see :mod:`daemon.analytics.regions`."""
