"""API keys and the dashboard's sessions: scoped keys stored only as hashes
(``flywheel.keys.repo``), and the service that opens their transactions
(``flywheel.keys.service``)."""

__all__ = ["SCOPES", "SESSION_HOURS"]

#: what a key may be allowed: predict, give feedback, or everything (admin)
SCOPES = ("predict", "feedback", "admin")
#: how long a dashboard sign-in lasts
SESSION_HOURS = 12
