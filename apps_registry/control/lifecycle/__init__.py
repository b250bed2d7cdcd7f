"""Tracked lifecycle jobs run by the queue worker: moving an app to other environments with
no failed request (``move``), draining an environment (``drain``: every app it runs moves,
``APP_DRAIN_CONCURRENCY`` at a time), their pre-checks (``checks``), putting them on the
queue and running them there (``queue``), and finding the ones whose queue worker died
(``recovery``: resumed from their last finished step). Their state lives in ``Job``/``JobStep``
(``registry.jobs``); the state changes of a move in ``registry.moves``."""
