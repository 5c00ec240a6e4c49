"""The engine layer: the runtime state assembled from one configuration, and the engine that
runs jobs on it."""
