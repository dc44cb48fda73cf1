"""Errors of the job path: what the API answers, and how a task attempt ends.

    JobError                      answered by the gateway in the project's envelope
    ├── MalformedJob        400   the body is not JSON
    ├── InvalidJob          422   bad task, options, inputs or input_uri, or NaN / Infinity; nothing queued
    ├── JobTooLarge         413   POST /jobs body over JOB_MAX_INLINE_BYTES
    ├── JobNotFound         404   no such job id
    ├── JobNotFinished      409   result asked for before the job succeeded
    ├── JobAlreadyFinished  409   cancel of a finished job
    ├── JobNotFailed        409   retry of a job that is not failed
    ├── VersionNotFound     404   no such model version (jobs.registry)
    ├── InvalidVersion      422   a version's files, names or serving state are not acceptable
    ├── CorruptVersion      422   a version's file in the store does not match its manifest (size, sha256)
    ├── ActivationConflict  409   another change of a model's serving state got there first
    └── JobsUnavailable     503   the broker, the store or the job database did not answer (Retry-After)
        └── DependencyRefused 503 it answered with a refusal that trying again would not change

    TaskFailed                    raised by a task: the job fails now, no retry
    JobCancelled                  raised at a checkpoint once a cancel was asked for

Any other exception out of a task is taken as transient: the attempt is
retried until JOB_MAX_DELIVERIES, then the job is dead-lettered and failed.
"""

from __future__ import annotations


class JobError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class MalformedJob(JobError):
    status_code = 400
    code = "malformed_request"


class InvalidJob(JobError):
    status_code = 422
    code = "invalid_job"


class JobTooLarge(JobError):
    status_code = 413
    code = "payload_too_large"


class JobNotFound(JobError):
    status_code = 404
    code = "job_not_found"


class JobNotFinished(JobError):
    status_code = 409
    code = "job_not_finished"


class JobAlreadyFinished(JobError):
    status_code = 409
    code = "job_already_finished"


class JobNotFailed(JobError):
    status_code = 409
    code = "job_not_failed"


class VersionNotFound(JobError):
    status_code = 404
    code = "version_not_found"


class InvalidVersion(JobError):
    status_code = 422
    code = "invalid_version"


class CorruptVersion(JobError):
    """Nothing may load it: the store lost or changed a file since the version was registered."""

    status_code = 422
    code = "corrupt_version"


class ActivationConflict(JobError):
    status_code = 409
    code = "activation_in_progress"


class JobsUnavailable(JobError):
    status_code = 503
    code = "jobs_unavailable"
    #: Whether trying again later may succeed (an outage); False: the dependency refused the request itself.
    transient = True


class DependencyRefused(JobsUnavailable):
    """A dependency answered, and would answer the same again (refused credentials, a bad configuration)."""

    transient = False


class TaskFailed(Exception):
    """A failure that another attempt would repeat (bad rows, a worker's 4xx)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class JobCancelled(Exception):
    """The job was cancelled; the sidecar stops it and acks its message."""
