"""Verify the DKIM signatures of the message on stdin with OpenDKIM's libopendkim, an
implementation independent of dkimpy that knows Ed25519 (RFC 8463).

Debian's `opendkim-testmsg` cannot read a message ("dkim_chunk(): Syntax error" for any
input), so this drives the library's header/eoh/body/eom interface, as the milter does.
Keys are looked up by the library through the C resolver, i.e. /etc/resolv.conf: the test
runs this in a mount namespace where that file names the tests' DNS server.

Prints "<domain> <selector> <algorithm> pass|fail (<error>)" per signature.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

PASSED = 0x04  # DKIM_SIGFLAG_PASSED
BODY_HASH_MATCH = 0  # DKIM_SIGBH_MATCH
ALGORITHMS = {0: "rsa-sha1", 1: "rsa-sha256", 2: "ed25519-sha256"}


def load() -> ctypes.CDLL:
    lib = ctypes.CDLL(ctypes.util.find_library("opendkim") or "libopendkim.so.11")
    pointer, text = ctypes.c_void_p, ctypes.c_char_p
    lib.dkim_init.restype = pointer
    lib.dkim_init.argtypes = [pointer, pointer]
    lib.dkim_verify.restype = pointer
    lib.dkim_verify.argtypes = [pointer, text, pointer, ctypes.POINTER(ctypes.c_int)]
    for name in ("dkim_header", "dkim_body"):
        getattr(lib, name).argtypes = [pointer, text, ctypes.c_size_t]
    lib.dkim_eoh.argtypes = [pointer]
    lib.dkim_eom.argtypes = [pointer, pointer]
    lib.dkim_getsiglist.argtypes = [pointer, ctypes.POINTER(ctypes.POINTER(pointer)),
                                    ctypes.POINTER(ctypes.c_int)]
    lib.dkim_sig_getflags.argtypes = lib.dkim_sig_getbh.argtypes = [pointer]
    lib.dkim_sig_getflags.restype = ctypes.c_uint
    lib.dkim_sig_getdomain.argtypes = lib.dkim_sig_getselector.argtypes = [pointer]
    lib.dkim_sig_getdomain.restype = lib.dkim_sig_getselector.restype = text
    lib.dkim_sig_getsignalg.argtypes = [pointer, ctypes.POINTER(ctypes.c_int)]
    lib.dkim_sig_geterror.argtypes = [pointer]
    lib.dkim_sig_geterrorstr.restype = text
    lib.dkim_free.argtypes = [pointer]
    lib.dkim_close.argtypes = [pointer]
    return lib


def header_fields(head: bytes) -> list[bytes]:
    """The header fields, each with its folding but without its final CRLF."""
    fields: list[bytes] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\r\n" + line
        elif line:
            fields.append(line)
    return fields


def verify(message: bytes) -> list[str]:
    lib = load()
    library = lib.dkim_init(None, None)
    status = ctypes.c_int()
    handle = lib.dkim_verify(library, b"test", None, ctypes.byref(status))
    head, _, body = message.partition(b"\r\n\r\n")
    for field in header_fields(head):
        lib.dkim_header(handle, field, len(field))
    lib.dkim_eoh(handle)
    lib.dkim_body(handle, body, len(body))
    lib.dkim_eom(handle, None)
    signatures = ctypes.POINTER(ctypes.c_void_p)()
    count = ctypes.c_int()
    lib.dkim_getsiglist(handle, ctypes.byref(signatures), ctypes.byref(count))
    lines = []
    for index in range(count.value):
        signature = signatures[index]
        algorithm = ctypes.c_int(-1)
        lib.dkim_sig_getsignalg(signature, ctypes.byref(algorithm))
        passed = (lib.dkim_sig_getflags(signature) & PASSED
                  and lib.dkim_sig_getbh(signature) == BODY_HASH_MATCH)
        error = lib.dkim_sig_geterrorstr(lib.dkim_sig_geterror(signature)) or b"-"
        lines.append(" ".join([
            lib.dkim_sig_getdomain(signature).decode(),
            lib.dkim_sig_getselector(signature).decode(),
            ALGORITHMS.get(algorithm.value, str(algorithm.value)),
            "pass" if passed else f"fail ({error.decode()})"]))
    lib.dkim_free(handle)
    lib.dkim_close(library)
    return lines


if __name__ == "__main__":
    print("\n".join(verify(sys.stdin.buffer.read())))
