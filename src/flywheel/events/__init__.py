"""Events out: webhooks on what the loop does (retrains, gate decisions, promotions,
rollbacks, forgets), signed, retried, each delivery on record."""

from flywheel.events.hooks import EVENTS, Webhook, check_url, sign

__all__ = ["EVENTS", "Webhook", "check_url", "sign"]
