"""The tag-aware cache: tag tokens, the in-process tier and single flight."""
