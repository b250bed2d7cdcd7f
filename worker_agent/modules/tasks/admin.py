"""Admin pages for tasks, registered on each hosted app's own AdminSite."""

from django.contrib import admin

from worker_agent.modules.tasks.models import Task


class TaskAdmin(admin.ModelAdmin):
    list_display = ("title", "status", "due_date", "assignee", "updated_at")
    list_filter = ("status", "due_date", "assignee")
    list_editable = ("status",)
    search_fields = ("title", "description", "assignee")
    date_hierarchy = "due_date"
    actions = ("mark_done",)

    @admin.action(description="Mark selected tasks as done")
    def mark_done(self, request, queryset) -> None:
        updated = queryset.update(status=Task.Status.DONE)
        self.message_user(request, f"{updated} task(s) marked as done.")


def register(site: admin.AdminSite) -> None:
    site.register(Task, TaskAdmin)
