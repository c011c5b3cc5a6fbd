"""The generated stubs of the ``dataaccess.v1`` proto package (``make proto`` writes them)."""
