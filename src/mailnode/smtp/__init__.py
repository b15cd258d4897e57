"""SMTP adapters: the inbound server, the outbound client and MX resolution."""
