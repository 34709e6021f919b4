"""The SIP side of voicegate (pjsua2) and the application that wires it to media/ and agents/."""
