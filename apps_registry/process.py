"""Process adapters: how apps are started and stopped (placeholder)."""

import logging

log = logging.getLogger(__name__)


class _UnwiredProcessAdapter:
    def start(self, app_pk, environments, *, generation, request_id):
        log.warning("start of app %s not dispatched: process adapter not wired yet", app_pk)

    def stop(self, name, environments, *, generation, request_id):
        log.warning("stop of app %s not dispatched: process adapter not wired yet", name)

    def restart(self, name, environments, *, generation, request_id):
        log.warning("restart of app %s not dispatched: process adapter not wired yet", name)

    def remove(self, name, environments, *, generation, request_id, drop_data):
        log.warning("remove of app %s not dispatched: process adapter not wired yet", name)


def get_process_adapter() -> _UnwiredProcessAdapter:
    return _UnwiredProcessAdapter()
