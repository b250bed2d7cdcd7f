"""The start queue: starts an app on its environments one after another.

A start can write an app's initial data, so two environments must never initialise one app
at once. Every start request becomes an RQ job on ``app_starts`` (``enqueue``, after commit);
the job (``job``) takes a per-app lock (``lock``: in Redis, owner token, expiry renewed while it
runs), then walks the app's environments in the app's own order (``job.start_order``: name
order rotated by a stable hash of the app's name, so first initialisations spread over the
environments instead of all landing on the first one): it stops if a later request superseded
it, marks the environment ``starting``, asks the runner to start it there and waits for
``running``, ``error`` or the start timeout before going on.

Different apps start in parallel on several queue workers (``worker``); one app's starts stay
serial because of the lock, not because of the queue. A job that cannot take the lock (an
older job of the same app is finishing its current environment) puts itself back at the end
of the queue instead of pinning a queue worker.

If a queue worker dies mid-start its lock expires; ``recovery.recover_interrupted_starts``
(run when a queue worker starts and while it idles, and by the status endpoint) marks what the
dead job left ``queued``/``starting`` as ``error`` ("start interrupted") so it can be retried.
"""
