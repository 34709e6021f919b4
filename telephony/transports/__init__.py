"""Ways in besides SIP: each delivers 16 kHz frames to the same CallSession."""
