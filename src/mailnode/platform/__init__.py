"""The sending platform: API keys (more to come: domains, templates, batches)."""
