"""Media IO: video/audio through PyAV, image crop/resize into the model range."""
