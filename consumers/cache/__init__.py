"""The cache group: keeps the content cache warm ahead of readers."""
