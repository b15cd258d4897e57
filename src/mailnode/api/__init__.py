"""The HTTP face of mailnode: the transaction API, captures, health."""
