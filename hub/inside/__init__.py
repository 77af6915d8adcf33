"""Container side of cellbox.hub: launch.py is bound read-only into a student server."""
