"""Code generated from the dataaccess protos, at the path of their proto packages.

``dataaccess.v1`` holds the stubs of ``proto/dataaccess/v1``; ``make proto``
writes them and ``make proto-check`` fails when they are out of date. Nothing
here is written by hand but these package files.
"""
