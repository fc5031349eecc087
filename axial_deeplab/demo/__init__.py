"""A local demo page: ``axial-deeplab-demo --weights model.pth`` (see :mod:`.server`)."""
