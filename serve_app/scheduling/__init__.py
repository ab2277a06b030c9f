"""Scheduling across generator replicas: the backlog autoscaling policy and the batch-key ranking.

Ray-free, so both are unit-tested with plain objects; ``deployments/router.py``
wraps the ranking in Serve's ``RequestRouter``.
"""
