"""QA call simulation: a pjsua2 caller that speaks, listens and measures on the wire."""
