"""The SIP side: transports, the sans-IO transaction layer and the core that
drives it, the B2BUA call, digest authentication and SIP MESSAGE."""
