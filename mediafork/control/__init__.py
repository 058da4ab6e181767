"""Control plane: resources, validation, TwiML, status callbacks and the store."""
