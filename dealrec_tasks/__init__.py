"""DEALRec pipeline library."""
