from django.apps import AppConfig


class ContactsConfig(AppConfig):
    name = "worker_agent.modules.contacts"
    label = "contacts"
    verbose_name = "Contacts"
