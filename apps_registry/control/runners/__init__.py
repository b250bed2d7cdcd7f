"""How apps are started and stopped: ``remote`` (commands to the workers over Redis, starts
through the queue; APP_MODE=supervisor) or ``local`` (in this process; standalone). Settings
name the one in use (``APP_PROCESS_BACKEND``); ``apps_registry.backends.runner()`` returns it."""
