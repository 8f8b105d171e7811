"""Pieces used by both the producer and the worker: settings, wire codec, names, errors, results."""
