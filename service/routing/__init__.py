"""The routing tier: which database(s) a call goes to, and how a group's answers combine.

``router`` holds the databases and groups by name and picks a member by
``route_key``; ``fan_out`` runs a read on every member in parallel under the
``router`` span; ``merge`` combines their rows (concatenate, merge by order,
re-aggregate). Imports no ``grpc`` or generated code.
"""
