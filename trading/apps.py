from django.apps import AppConfig
from django.db.models.signals import post_migrate


class TradingConfig(AppConfig):
    name = "trading"

    def ready(self) -> None:
        from trading.storage import report_candle_store_after_migrate

        post_migrate.connect(report_candle_store_after_migrate, sender=self)
