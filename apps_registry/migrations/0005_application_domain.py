import django.db.models
from django.db import migrations

import apps_registry.names


class Migration(migrations.Migration):
    dependencies = [
        ("apps_registry", "0004_audit_outcomes"),
    ]

    operations = [
        migrations.AddField(
            model_name="application",
            name="domain",
            field=django.db.models.CharField(
                blank=True,
                help_text="Optional host name (e.g. crm.example.com) serving this app at /. Point its DNS at the supervisor.",
                max_length=253,
                null=True,
                unique=True,
                validators=[apps_registry.names.validate_app_domain],
            ),
        ),
    ]
