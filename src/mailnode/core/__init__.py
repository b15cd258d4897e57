"""Pure logic: plain functions over plain values, no I/O, no event loop."""
