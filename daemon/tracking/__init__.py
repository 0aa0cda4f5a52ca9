"""Multi-object tracking per source (ByteTrack on numpy): see :mod:`daemon.tracking.bytetrack`."""
