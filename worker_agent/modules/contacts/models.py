"""Contacts: the people and companies an app's users deal with."""

from django.db import models

from worker_agent.modules.storage import app_media_storage, attachment_path


class Contact(models.Model):
    name = models.CharField(max_length=200)
    email = models.EmailField(blank=True)
    phone = models.CharField(max_length=50, blank=True)
    company = models.CharField(max_length=200, blank=True)
    notes = models.TextField(blank=True)
    # Stored under the app's own media folder (<storage>/media/<app>/contacts/).
    attachment = models.FileField(upload_to=attachment_path, storage=app_media_storage, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        indexes = [models.Index(fields=["company"])]

    def __str__(self) -> str:
        return self.name
