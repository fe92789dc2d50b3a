"""Background jobs: the queue in the database (``flywheel.jobs.repo``: each job queued,
claimed by one worker per attempt, succeeded or failed, with a progress log and its
attempts), and the service that creates, claims, runs and recovers them
(``flywheel.jobs.service``)."""

__all__: list[str] = []
