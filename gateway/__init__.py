"""gateway: an async telephony gateway for the shared phone numbers of a real-estate CRM."""

__version__ = "0.1.0"
