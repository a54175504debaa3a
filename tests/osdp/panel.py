"""A real OSDP control panel (PyPI `libosdp`, the Python bindings of the C libosdp) on one end of a
pseudo-terminal pair, for `tests/osdp.rs`. deepgate, the peripheral device, opens the other end as its
serial port.

Protocol with the test (one JSON object per line):
- stdout: first {"pty": "/dev/pts/N"}; then every event from the PD ({"event": "status", ...},
  {"event": "mfg", ...}), and {"online": bool, "secure": bool} whenever either changes.
- stdin, one command per line (the first must be `start`, when the PD is up):
    corrupt            flip a bit in the next frame the panel sends (a bad CRC on the wire)
    replay             send again, later, a secure frame the panel already sent (an old sequence number and MAC)
    oversize           write a frame header announcing 4000 bytes, then junk
    garbage            write 64 random bytes
    keyset HEX         set a new site key (osdp_KEYSET; needs the secure channel)
    health             send the manufacturer health query [2]
    id                 print the PD identity read at connection (osdp_PDID): {"id": {"serial_number": N, ...}}
    output N CODE T    osdp_OUT: output N, control code CODE, timer T (100 ms units)
    quit
The panel never judges; the test asserts on what it prints.
"""

import argparse
import json
import os
import random
import sys
import threading
import time
import tty

import osdp


class PtyChannel(osdp.Channel):
    """The master side of the pty, with the tampering the test asks for."""

    def __init__(self, fd):
        super().__init__()
        self.fd = fd
        self.corrupt_next = False
        self.captured = None
        self.replay_at = None
        self.lock = threading.Lock()

    def read(self, max_bytes):
        try:
            return os.read(self.fd, max_bytes)
        except (BlockingIOError, OSError):
            return b""

    def write(self, buf):
        data = bytes(buf)
        with self.lock:
            if self.corrupt_next and len(data) > 8:
                self.corrupt_next = False
                tampered = bytearray(data)
                tampered[len(tampered) // 2] ^= 0x10
                data = bytes(tampered)
            # Keep a secure (control bit 3) frame to replay later.
            frame = data.lstrip(b"\xff")  # libosdp sends a mark byte before each frame
            if self.captured is None and self.replay_at is not None and len(frame) > 5 and frame[0] == 0x53 \
                    and frame[4] & 0x08:
                self.captured = data
                self.replay_at = time.monotonic() + 1.0
        try:
            return os.write(self.fd, data)
        except BlockingIOError:
            return 0

    def flush(self):
        pass

    def __del__(self):
        pass

    def inject(self, data):
        with self.lock:
            os.write(self.fd, data)

    def due_replay(self):
        with self.lock:
            if self.captured is not None and self.replay_at is not None and time.monotonic() >= self.replay_at:
                data, self.captured, self.replay_at = self.captured, None, None
                return data
        return None


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def plain(value):
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    return value


def describe(event):
    event = dict(event)
    kind = event.pop("event", None)
    if kind == osdp.Event.Status:
        names = {osdp.StatusReportType.Input: "input", osdp.StatusReportType.Local: "local",
                 osdp.StatusReportType.Output: "output", osdp.StatusReportType.Remote: "remote"}
        event["type"] = names.get(event.get("type"), event.get("type"))
        return {"event": "status", **plain(event)}
    if kind == osdp.Event.ManufacturerReply:
        return {"event": "mfg", **plain(event)}
    return {"event": str(kind), **plain(event)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", type=int, required=True)
    parser.add_argument("--scbk", help="site key, 32 hex digits; omitted: no secure channel")
    parser.add_argument("--install", action="store_true", help="use the default key SCBK-D (install mode)")
    parser.add_argument("--vendor", default="0a1b2c")
    args = parser.parse_args()

    master, slave = os.openpty()
    tty.setraw(slave)  # the PD sets raw mode too; this keeps bytes intact before it does
    os.set_blocking(master, False)
    channel = PtyChannel(master)
    flags = []
    key = None
    if args.scbk:
        key = bytes.fromhex(args.scbk)
        flags.append(osdp.LibFlag.EnforceSecure)
    elif args.install:
        # Commissioning: the public default key SCBK-D (0x30..0x3F), as a panel in install mode uses it.
        key = bytes(range(0x30, 0x40))
        flags += [osdp.LibFlag.EnforceSecure, osdp.LibFlag.InstallMode]
    info = osdp.PDInfo(args.address, channel, scbk=key, flags=flags)
    panel = osdp.ControlPanel([info], log_level=osdp.LogLevel.Warning)
    emit({"pty": os.ttyname(slave)})
    # The panel starts polling when told: libosdp takes a silent PD offline for minutes, and deepgate needs a
    # few seconds to load its models before it answers.
    for line in sys.stdin:
        if line.strip() == "start":
            break
    panel.start()

    stop = threading.Event()

    def commands():
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            if words[0] == "quit":
                break
            if words[0] == "corrupt":
                channel.corrupt_next = True
            elif words[0] == "replay":
                channel.replay_at = time.monotonic() + 3600  # armed: capture the next secure frame
            elif words[0] == "oversize":
                channel.inject(bytes([0x53, args.address, 0xA0, 0x0F, 0x04]) + bytes(range(40)))
            elif words[0] == "garbage":
                channel.inject(bytes(random.Random(7).randrange(256) for _ in range(64)))
            elif words[0] == "keyset":
                done = panel.submit_command(args.address, {
                    "command": osdp.Command.Keyset, "type": 1, "data": bytes.fromhex(words[1])})
                emit({"submitted": "keyset", "ok": bool(done)})
            elif words[0] == "output":
                done = panel.submit_command(args.address, {
                    "command": osdp.Command.Output, "output_no": int(words[1]),
                    "control_code": int(words[2]), "timer_count": int(words[3])})
                emit({"submitted": "output", "ok": bool(done)})
            elif words[0] == "id":
                pd_id = panel.get_pd_id(args.address)
                emit({"id": {"serial_number": pd_id.serial_number, "vendor_code": pd_id.vendor_code}})
            elif words[0] == "health":
                done = panel.submit_command(args.address, {
                    "command": osdp.Command.Manufacturer, "vendor_code": int.from_bytes(bytes.fromhex(args.vendor), "little"),
                    "data": bytes([2])})
                emit({"submitted": "health", "ok": bool(done)})
        stop.set()

    threading.Thread(target=commands, daemon=True).start()
    last = None
    went_offline = None
    while not stop.is_set():
        event = panel.get_event(args.address, timeout=0.05)
        if event is not None:
            emit(describe(event))
        data = channel.due_replay()
        if data is not None:
            channel.inject(data)
            emit({"replayed": len(data)})
        now = (panel.is_online(args.address), panel.is_sc_active(args.address))
        if now != last:
            if last is not None and last[0] and not now[0]:
                went_offline = time.monotonic()
            last = now
            emit({"online": now[0], "secure": now[1]})
        # libosdp's panel waits 300 s before polling a PD again once it has gone offline (after a NAK in a
        # secure session, say); a site controller retries sooner. Start a new panel session after 1 s.
        if went_offline is not None and time.monotonic() - went_offline > 1.0:
            went_offline = None
            panel.teardown()
            panel = osdp.ControlPanel([info], log_level=osdp.LogLevel.Warning)
            panel.start()
            emit({"restarted": True})
    panel.teardown()
    os._exit(0)


if __name__ == "__main__":
    main()
