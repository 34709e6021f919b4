"""Errors that name whose fault they are."""


class VoicegateError(Exception):
    """Base of voicegate's own errors."""


class PjsuaBuildError(VoicegateError):
    """The installed pjsua2 build is not the one voicegate's code assumes (call limit, frame layout)."""


class SipStartError(VoicegateError):
    """The SIP stack could not start (a port in use, a bad address): the host's fault, not the caller's."""
