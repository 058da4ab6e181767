"""SIP for SIPREC: sans-I/O message, transaction, dialog, SDP and metadata cores."""
