from django.apps import AppConfig
from django.db.models.signals import post_migrate


class GovernanceConfig(AppConfig):
    name = "governance"

    def ready(self) -> None:
        from governance.protection import reinstall_audit_triggers_after_migrate

        post_migrate.connect(reinstall_audit_triggers_after_migrate, sender=self)
