"""The pjsua/pjmedia C API inside pjsua2's own extension module, for what pjsua2 does not wrap (call counts, our
own media ports in telephony/media_port.py). One handle for the process; the functions need pjsua's libInit."""

from __future__ import annotations

import ctypes

import pjsua2 as pj

lib = ctypes.CDLL(pj._pjsua2.__file__)
lib.pjsua_call_get_max_count.restype = ctypes.c_uint
lib.pjsua_call_get_count.restype = ctypes.c_uint


def max_call_count() -> int:
    """The call limit the loaded pjsua library really applies."""
    return int(lib.pjsua_call_get_max_count())


def call_count() -> int:
    """Calls pjsua holds now (a hung-up call until its INVITE session is over)."""
    return int(lib.pjsua_call_get_count())
