"""``dataaccess.v1.data_access_pb2_grpc`` under its old name: import it from there instead."""

from dataaccess.v1.data_access_pb2_grpc import *  # noqa: F403
