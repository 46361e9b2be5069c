"""The block-job engine, split as QEMU splits it.

``job`` (job.c: states, verbs, the job thread) and ``states`` (its tables),
``blockjob`` (blockjob.c: speed and ``ratelimit``, the device, BLOCK_JOB_* events,
the on-error policy), ``registry`` (the jobs of one monitor, by id), the format-free
``copy_plan`` and one module per job kind: ``stream`` (block/stream.c), ``backup``
(block/backup.c and its copy-before-write filter).
"""
