"""Schedules for the kernels a compile builds: committed tuning records, then a default for the rest.

    records.py   the MetaSchedule record folders (schedules/<target>/, --records) and applying them
    default.py   the fixed tiled/vectorized/tensorized schedule of every kernel left without a record

Tuning itself (searching for records with MetaSchedule) is qcompile.tune, a layer above the pipeline.
"""
