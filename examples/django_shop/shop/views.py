"""POST /orders/ creates an order and publishes ``order.created`` in one transaction."""

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from webhook_dispatch.contrib.django import dispatcher

from .models import Order


@csrf_exempt  # an API endpoint for the example; keep CSRF protection for forms
@require_POST
def create_order(request: HttpRequest) -> JsonResponse:
    with transaction.atomic():
        order = Order.objects.create(total=int(request.POST.get("total", 0)))
        # Sent if and only if this transaction commits.
        message = dispatcher.publish("order.created", {"id": order.pk, "total": order.total})
        if request.POST.get("fail"):
            # Something later in the view goes wrong: the order and its webhook roll
            # back together, and nothing is ever sent.
            raise RuntimeError("payment declined")
    return JsonResponse({"order": order.pk, "webhook_id": message.id})
