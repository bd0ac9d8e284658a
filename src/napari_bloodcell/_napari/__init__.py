"""The napari-facing part: thin wrappers that turn core results into napari layer data."""
