"""The generated stubs' old address, kept for callers who import them from here.

The stubs live in ``dataaccess.v1``; the modules here only re-export them.
"""
