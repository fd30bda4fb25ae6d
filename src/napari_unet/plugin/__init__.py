"""napari layer: widgets, readers, writers and sample data, thin wrappers around the core."""
