"""One server process per core: how many, the port they share, and who supervises them.

``count`` picks the number of workers (``cpus`` reads what the cgroup allows);
``port`` reserves the shared address before anything forks; ``supervisor``
forks the workers, tells them to stop and says how they ended; ``worker`` is
one worker's side of it; ``seat`` is what a worker knows of its place.
With one worker nothing here runs: ``python -m service`` serves in its own
process, as it always has.
"""
