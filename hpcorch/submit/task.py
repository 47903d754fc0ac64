"""Old path of :class:`hpcorch.batch.task.TrainTask`, kept for one release.

submitit pickles the task by reference, so a job submitted before the stage folders and requeued
after the upgrade unpickles ``hpcorch.submit.task.TrainTask``; it is the same class.
"""
from hpcorch.batch.task import TrainTask

__all__ = ["TrainTask"]
