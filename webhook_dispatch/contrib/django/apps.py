"""The Django app: add ``"webhook_dispatch.contrib.django"`` to ``INSTALLED_APPS`` for the
``webhook_dispatch_worker`` and ``webhook_dispatch`` management commands."""

from __future__ import annotations

from django.apps import AppConfig

__all__ = ["WebhookDispatchConfig"]


class WebhookDispatchConfig(AppConfig):
    """webhook_dispatch as a Django app (no models: the store keeps its own tables)."""

    name = "webhook_dispatch.contrib.django"
    label = "webhook_dispatch"
    verbose_name = "Webhooks"
