"""The registry's action functions: the only way an application's or environment's state
changes, and the way API tokens are issued and revoked. Each writes the audit trail; updates
that race with other processes (a worker's report against an operator's request) are guarded
on the rows themselves
(``filter(pk=..., <expected state>).update(...)``).

The admin, the API, the start queue and the ingest of worker events call them from here;
they are defined by concern in the modules beside this one. Tracked jobs (move, drain, backup,
…) change only through ``registry.jobs``, called by the jobs' runners (``control.lifecycle``).
"""

from apps_registry.registry.applications import (
    ACTIVE,
    STARTABLE,
    ApplicationGone,
    PlacementChange,
    PlacementWouldStop,
    create_application,
    delete_application,
    request_remove,
    request_restart,
    request_start,
    request_stop,
    set_application_environments,
    takedown,
    update_application,
)
from apps_registry.registry.backups import (
    BackupNotUsable,
    backup_failed,
    backup_started,
    backup_succeeded,
    prune_backups,
    record_drill,
    request_backup,
    request_clone,
    request_drill,
    request_restore,
)
from apps_registry.registry.environments import (
    HEARTBEAT_RESOLUTION,
    NotApproved,
    deregister_environment,
    forget_environment,
    placements_on,
    refresh_environments,
    register_environment,
    set_environment_enabled,
)
from apps_registry.registry.failover import fail_over_application
from apps_registry.registry.identities import (
    IDENTITY_AUDIT_EVERY,
    NothingToRebind,
    approve_environment,
    bind_environment_keys,
    rebind_environment,
    record_identity_refusals,
)
from apps_registry.registry.moves import (
    SwitchRefused,
    place_move_targets,
    roll_back_move,
    set_environment_draining,
    switch_route,
    unload_sources,
)
from apps_registry.registry.reports import record_app_status, record_app_statuses
from apps_registry.registry.requests import audit, close_request, new_request_id, note_converged, record_outcome
from apps_registry.registry.starts import (
    START_INTERRUPTED,
    begin_environment_start,
    interrupt_starts,
    resume_start_request,
)
from apps_registry.registry.tokens import issue_api_token, revoke_api_tokens

__all__ = [
    "BackupNotUsable",
    "backup_failed",
    "backup_started",
    "backup_succeeded",
    "prune_backups",
    "record_drill",
    "request_backup",
    "request_clone",
    "request_drill",
    "request_restore",
    "ACTIVE",
    "HEARTBEAT_RESOLUTION",
    "IDENTITY_AUDIT_EVERY",
    "NotApproved",
    "NothingToRebind",
    "STARTABLE",
    "SwitchRefused",
    "ApplicationGone",
    "PlacementChange",
    "PlacementWouldStop",
    "START_INTERRUPTED",
    "approve_environment",
    "audit",
    "begin_environment_start",
    "bind_environment_keys",
    "close_request",
    "create_application",
    "delete_application",
    "fail_over_application",
    "deregister_environment",
    "forget_environment",
    "interrupt_starts",
    "issue_api_token",
    "new_request_id",
    "note_converged",
    "place_move_targets",
    "placements_on",
    "record_app_status",
    "record_app_statuses",
    "record_identity_refusals",
    "record_outcome",
    "rebind_environment",
    "refresh_environments",
    "register_environment",
    "request_remove",
    "request_restart",
    "request_start",
    "request_stop",
    "resume_start_request",
    "revoke_api_tokens",
    "roll_back_move",
    "set_application_environments",
    "set_environment_draining",
    "set_environment_enabled",
    "switch_route",
    "takedown",
    "unload_sources",
    "update_application",
]
