from django.apps import AppConfig


class HedgingConfig(AppConfig):
    name = "hedging"
