"""blockmon's NBD server: the wire format, negotiation, transmission, and the listener."""
