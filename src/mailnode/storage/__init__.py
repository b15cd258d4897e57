"""Durable state: tables, the engine, migrations and the Store (each write one transaction)."""
