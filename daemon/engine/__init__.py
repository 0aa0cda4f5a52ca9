"""The engine lifecycle: fingerprints, the on-disk engine cache, artifact builders, self-healing start."""
