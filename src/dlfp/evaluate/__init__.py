"""Stage `evaluate` and its metric registry: pyiqa wrappers, identity, landmarks, face-descriptor FD."""
