"""Background jobs: the record of each (queued, running, succeeded or failed, with a
progress log) in ``flywheel.jobs.repo``, and the service that runs work as a job
(``flywheel.jobs.service``)."""

__all__: list[str] = []
