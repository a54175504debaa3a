"""A TLS controller for tests/tls_gate.rs, on Python's own `ssl` module (OpenSSL): TLS 1.3 only, the device's
certificate required and checked against the device CA. It prints {"port": N}, then {"line": ..., "signature":
"valid" | "invalid" | "absent"} for every line the gate sends (acknowledging each verdict id), and {"error": ...}
when a handshake fails. Signatures are checked as a controller pins the device: Ed25519 (the `cryptography`
package, pinned in tests/osdp/requirements.txt) against the device's public key, over the line cut at its
signature field and closed again (src/gate/tcp/envelope.rs).

Usage: controller.py CERT KEY DEVICE_CA DEVICE_PUBLIC_KEY
       controller.py --check DEVICE_PUBLIC_KEY < LINES   (prints valid / invalid / absent per line)
"""

import json
import socket
import ssl
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

SIGNATURE_FIELD = ',"signature":"'


def check(public, text):
    """Whether the line carries a valid signature by `public`."""
    text = text.rstrip("\r\n")
    at = text.rfind(SIGNATURE_FIELD)
    if at < 0:
        return "absent"
    try:
        signature = bytes.fromhex(text[at + len(SIGNATURE_FIELD):-2])
        public.verify(signature, (text[:at] + "}").encode())
    except (InvalidSignature, ValueError):
        return "invalid"
    return "valid"


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main():
    if sys.argv[1] == "--check":
        public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(sys.argv[2]))
        for line in sys.stdin:
            print(check(public, line))
        return
    cert, key, device_ca, device_public = sys.argv[1:5]
    public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(device_public))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(cert, key)
    context.load_verify_locations(device_ca)
    context.verify_mode = ssl.CERT_REQUIRED
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    emit({"port": listener.getsockname()[1]})
    while True:
        raw, _ = listener.accept()
        try:
            stream = context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as error:
            emit({"error": str(error)})
            raw.close()
            continue
        peer = stream.getpeercert()
        emit({"client": dict(pair[0] for pair in peer.get("subject", ()))})
        reader = stream.makefile("rb")
        for line in reader:
            text = line.decode()
            emit({"line": text, "signature": check(public, text)})
            value = json.loads(text)
            if "id" in value:
                stream.sendall(('{"ack":%d}\n' % value["id"]).encode())
        stream.close()


if __name__ == "__main__":
    main()
