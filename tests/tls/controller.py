"""A TLS controller for tests/tls_gate.rs, on Python's own `ssl` module (OpenSSL): TLS 1.3 only, the device's
certificate required and checked against the device CA. It prints {"port": N}, then {"line": ...} for every line
the gate sends (acknowledging each verdict id), and {"error": ...} when a handshake fails.

Usage: controller.py CERT KEY DEVICE_CA
"""

import json
import socket
import ssl
import sys


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main():
    cert, key, device_ca = sys.argv[1:4]
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
            emit({"line": text})
            value = json.loads(text)
            if "id" in value:
                stream.sendall(('{"ack":%d}\n' % value["id"]).encode())
        stream.close()


if __name__ == "__main__":
    main()
