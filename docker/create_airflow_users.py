"""Create (or re-password) the Airflow admin of .env and the read-only role ``DEALRecViewer``: the last step of the
``airflow-init`` job, after ``airflow db migrate``.

The stack runs Airflow's FAB auth manager: users, roles and per-DAG grants live in Airflow's database, so the
DEALRec view's check (read access to ``dealrec_daily``) tells people apart. This job is the only service that holds
the admin password (``AIRFLOW_ADMIN_PASSWORD``); the api-server checks logins against the database, and the workers,
where task code runs, never see it. Idempotent: an existing admin gets the password of .env when it differs (so
rotating it means editing .env and rerunning the job) and keeps the ``Admin`` role.

``DEALRecViewer`` is FAB's ``Viewer`` role narrowed to the DEALRec DAGs: read access to ``dealrec_daily`` and
``dealrec_finetune`` (their runs, tasks, logs, the DEALRec view) and to the plugin list (the "DEALRec" menu entry),
nothing on other DAGs, no trigger, no edit. Give it to people who should see the results; ``Viewer`` (read on every
DAG), ``User``, ``Op`` and ``Admin`` are FAB's own roles. Missing permissions are added on every run; permissions an
admin added in the UI are kept.
"""

from __future__ import annotations

import os
import sys

ROLE = "DEALRecViewer"
DAGS = ("dealrec_daily", "dealrec_finetune")
# FAB's names (airflow.providers.fab.www.security.permissions): the global DAGs resource, a DAG's own resource.
CAN_READ, ALL_DAGS, DAG_PREFIX, PLUGINS = "can_read", "DAGs", "DAG:", "Plugins"


def viewer_permissions(viewer: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """FAB's Viewer permissions, with read on every DAG replaced by read on the DEALRec DAGs, plus the plugins."""
    perms = [p for p in viewer if p != (CAN_READ, ALL_DAGS) and not p[1].startswith(DAG_PREFIX)]
    perms += [(CAN_READ, DAG_PREFIX + dag_id) for dag_id in DAGS] + [(CAN_READ, PLUGINS)]
    return list(dict.fromkeys(perms))


def ensure_role(sm) -> int:
    """Create ``ROLE`` or add what it lacks; returns the number of permissions added."""
    viewer = sm.find_role("Viewer")
    if viewer is None:
        raise SystemExit("create_airflow_users: FAB's Viewer role is missing after syncing the roles")
    role = sm.find_role(ROLE) or sm.add_role(ROLE)
    have = {(p.action.name, p.resource.name) for p in role.permissions}
    wanted = viewer_permissions([(p.action.name, p.resource.name) for p in viewer.permissions])
    added = 0
    for action, resource in wanted:
        if (action, resource) not in have:
            sm.add_permission_to_role(role, sm.create_permission(action, resource))  # creates a missing resource
            added += 1
    return added


def ensure_admin(sm, username: str, password: str) -> str:
    """Make ``username`` an active Admin with ``password``; returns "created", "updated" or "unchanged"."""
    admin_role = sm.find_role("Admin")
    user = sm.find_user(username=username)
    if user is None:
        sm.add_user(username, "Airflow", "Admin", f"{username}@localhost", [admin_role], password)
        return "created"
    changed = False
    if admin_role not in user.roles or not user.active:
        user.roles = [*user.roles, admin_role] if admin_role not in user.roles else user.roles
        user.active = True
        sm.update_user(user)
        changed = True
    if not sm.check_password(username, password):
        if not sm.reset_password(user.id, password):  # also ends the sessions of the old password
            raise SystemExit(f"create_airflow_users: could not reset the password of {username!r}")
        changed = True
    return "updated" if changed else "unchanged"


def main() -> int:
    password = os.environ.get("AIRFLOW_ADMIN_PASSWORD", "")
    if not password.strip():
        raise SystemExit("create_airflow_users: set AIRFLOW_ADMIN_PASSWORD")
    username = os.environ.get("AIRFLOW_ADMIN_USER") or "admin"
    # The helper `airflow users create` and `airflow sync-perm` use: FAB's app on Airflow's database.
    from airflow.providers.fab.auth_manager.cli_commands.utils import get_application_builder

    with get_application_builder() as appbuilder:
        appbuilder.add_permissions(update_perms=True)  # what `airflow sync-perm` does first
        appbuilder.sm.sync_roles()  # FAB's built-in roles (Admin, Op, User, Viewer, Public) and their permissions
        added = ensure_role(appbuilder.sm)
        action = ensure_admin(appbuilder.sm, username, password)
    print(f"Airflow admin {username!r} {action}; role {ROLE}: {added} permission(s) added")
    return 0


if __name__ == "__main__":
    sys.exit(main())
