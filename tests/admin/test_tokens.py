"""API tokens in the admin: issued (shown once, with a copy button), revoked from the token's
page behind a confirmation, a read-only token page, the Active/Revoked filter; each audited."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django.utils import timezone

from apps_registry.models import ApiToken, AuditEntry
from tests.support.users import create_user

pytestmark = pytest.mark.django_db
TOKENS = "/admin/apps_registry/apitoken/"


def _signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_operator_issues_a_token_shown_once_with_a_copy_button_and_it_works(operator):
    owner = create_user("ci_owner", ["view_application"])
    client = _signed_in(operator)
    form = client.get(f"{TOKENS}add/")
    assert form.status_code == 200 and "Issue token" in form.content.decode()
    issued = client.post(f"{TOKENS}add/", {"user": owner.pk, "name": "ci"})
    assert issued.status_code == 200
    assert "no-store" in issued["Cache-Control"]
    page = issued.content.decode()
    raw = re.search(r'id="appsup-token" value="([^"]+)"', page).group(1)
    assert 'id="appsup-copy-token"' in page and "apps_registry/copy.js" in page
    token = ApiToken.objects.get(user=owner)
    assert token.name == "ci" and token.token_hash == ApiToken.hash(raw)
    assert Client(HTTP_AUTHORIZATION=f"Bearer {raw}").get("/api/v1/apps").status_code == 200
    # Never shown again: not on its page, not in the list, not in the audit trail.
    assert raw not in client.get(f"{TOKENS}{token.pk}/change/").content.decode()
    assert raw not in client.get(TOKENS).content.decode()
    entry = AuditEntry.objects.get(action="api_token_issued")
    assert (entry.user, entry.via, entry.error) == (operator, "admin", f"token {token.prefix}… of ci_owner (ci)")


def test_issuing_refuses_bad_input_with_the_form_and_users_without_the_permission(operator, viewer):
    client = _signed_in(operator)
    bad = client.post(f"{TOKENS}add/", {"user": "999999", "name": "x" * 200})
    assert bad.status_code == 200 and "errorlist" in bad.content.decode()
    assert not ApiToken.objects.exists() and not AuditEntry.objects.filter(action="api_token_issued").exists()
    assert _signed_in(viewer).get(f"{TOKENS}add/").status_code == 403
    assert _signed_in(viewer).post(f"{TOKENS}add/", {"user": viewer.pk}).status_code == 403
    assert not ApiToken.objects.exists()


def test_token_page_is_read_only_and_revokes_behind_a_confirmation(operator):
    token, raw = ApiToken.issue(operator, name="ci")
    client = _signed_in(operator)
    page = client.get(f"{TOKENS}{token.pk}/change/").content.decode()
    assert 'name="_save"' not in page
    assert f"{TOKENS}{token.pk}/revoke/" in page
    asked = client.get(f"{TOKENS}{token.pk}/revoke/")
    assert asked.status_code == 200 and "Yes, revoke" in asked.content.decode()
    assert client.post(f"{TOKENS}{token.pk}/revoke/", {}).status_code == 200  # no confirm: asks again
    assert ApiToken.objects.get(pk=token.pk).revoked_at is None
    done = client.post(f"{TOKENS}{token.pk}/revoke/", {"confirm": "yes"})
    assert done.status_code == 302
    assert ApiToken.objects.get(pk=token.pk).revoked_at is not None
    assert Client(HTTP_AUTHORIZATION=f"Bearer {raw}").get("/api/v1/apps").status_code == 401
    entry = AuditEntry.objects.get(action="api_token_revoked")
    assert (entry.user, entry.via) == (operator, "admin")
    # A second confirmation revokes nothing more and writes no second entry.
    client.post(f"{TOKENS}{token.pk}/revoke/", {"confirm": "yes"})
    assert AuditEntry.objects.filter(action="api_token_revoked").count() == 1


def test_revoke_needs_the_change_permission_and_a_real_token(operator, viewer):
    token, _ = ApiToken.issue(operator)
    assert _signed_in(viewer).post(f"{TOKENS}{token.pk}/revoke/", {"confirm": "yes"}).status_code == 403
    assert ApiToken.objects.get(pk=token.pk).revoked_at is None
    client = _signed_in(operator)
    assert client.get(f"{TOKENS}999999/revoke/").status_code == 404
    assert client.get(f"{TOKENS}nonsense/revoke/").status_code == 302


def test_active_revoked_filter(operator):
    active, _ = ApiToken.issue(operator, name="live-one")
    revoked, _ = ApiToken.issue(operator, name="gone-one")
    ApiToken.objects.filter(pk=revoked.pk).update(revoked_at=timezone.now())
    client = _signed_in(operator)
    listing = client.get(TOKENS).content.decode()
    assert "By state" in listing and "revoked at" not in listing.split("changelist-filter")[-1].lower()
    only_active = client.get(f"{TOKENS}?state=active").content.decode()
    assert "live-one" in only_active and "gone-one" not in only_active
    only_revoked = client.get(f"{TOKENS}?state=revoked").content.decode()
    assert "gone-one" in only_revoked and "live-one" not in only_revoked
    assert client.get(f"{TOKENS}?state=bogus").status_code in (200, 302)
