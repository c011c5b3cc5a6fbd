"""``dataaccess.v1.data_access_pb2`` under its old name: import it from there instead."""

from dataaccess.v1.data_access_pb2 import *  # noqa: F403
