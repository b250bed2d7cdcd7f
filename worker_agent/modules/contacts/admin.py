"""Admin pages for contacts. Registered on each hosted app's own AdminSite, never on the
supervisor's (``worker_agent.web.app_sites`` calls ``register``)."""

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from worker_agent.modules.contacts.models import Contact


class ContactAdmin(admin.ModelAdmin):
    list_display = ("name", "company", "email", "phone", "attachment_link", "updated_at")
    list_filter = ("company", "updated_at")
    search_fields = ("name", "email", "phone", "company", "notes")
    ordering = ("name",)
    date_hierarchy = "created_at"
    fieldsets = (
        (None, {"fields": ("name", "company")}),
        ("Reach", {"fields": ("email", "phone")}),
        ("More", {"fields": ("notes", "attachment")}),
    )

    @admin.display(description="Attachment")
    def attachment_link(self, obj: Contact) -> str:
        if not obj.attachment:
            return "-"
        url = reverse("app_file", kwargs={"path": obj.attachment.name})
        return format_html('<a href="{}">download</a>', url)


def register(site: admin.AdminSite) -> None:
    site.register(Contact, ContactAdmin)
