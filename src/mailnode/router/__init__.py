"""Driving deliveries: version cache, output handler, filter chain, endpoints."""
