"""Servers that tests run on loopback: an SMTP/LMTP sink and an authoritative DNS server."""
