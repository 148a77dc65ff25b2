#!/usr/bin/env python3
"""The client side of scripts/bench/sentinel-failover.sh (see there); standard library only.

  sentinel-writer.py write READY_FILE DEADLINE_S SENTINEL_PORT...
      Follows Sentinel like a client library does and writes numbered keys (SET k<n> <n>), one
      at a time, until it has written for AFTER_S (0.5 s) to a master other than the first one,
      or until DEADLINE_S seconds have passed. Creates READY_FILE after its first acknowledged
      write. Then it reads every acknowledged key back from the master Sentinel reports and
      prints one line of `name=value` fields (times are Unix epoch seconds, as bash's
      $EPOCHREALTIME, so that the script can subtract the time of its kill -9).

  sentinel-writer.py events KILL_TIME SENTINEL_LOG...
      Prints, as `name=seconds` after KILL_TIME, when the first of the sentinels logged each
      step of the failover (+sdown, +odown, +elected-leader, +failover-state-wait-promotion,
      +promoted-slave, +switch-master).

No redis client library is used (none is installed here, and the script installs nothing):
RESP is small enough to speak over a plain socket.
"""

import socket
import sys
import time

MASTER_NAME = "mymaster"
# Pause after a failed attempt (connection refused, no master yet) before asking Sentinel
# again: short, so that it adds at most a few ms to the measured time, but not a busy loop
# that would take CPU from the sentinels on this 2-core machine.
RETRY_S = 0.005
# How long to keep writing to the new master once it has answered, so that its writes count.
AFTER_S = 0.5
# Timeout of one request: a live instance on loopback answers in well under that.
REQUEST_TIMEOUT_S = 1.0


class Conn:
    """One RESP connection: call() sends a command and returns its decoded reply."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT_S)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.port = port
        self.buf = b""

    def close(self):
        self.sock.close()

    def send(self, *commands):
        out = []
        for args in commands:
            out.append(b"*%d\r\n" % len(args))
            for a in args:
                a = a if isinstance(a, bytes) else str(a).encode()
                out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))

    def call(self, *args):
        self.send(args)
        return self.reply()

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed")
        self.buf += chunk

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self):
        """Decodes one reply; an error reply is returned as a RedisError, not raised."""
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RedisError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self._fill()
            data, self.buf = self.buf[:n], self.buf[n + 2:]
            return data
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise ConnectionError(f"bad reply {line!r}")


class RedisError(str):
    pass


def master_from_sentinels(sentinels):
    """The master's port as the first sentinel that answers reports it (client libraries ask
    their sentinels in order and take the first answer), or None."""
    for port in sentinels:
        try:
            c = Conn(port)
            try:
                addr = c.call("SENTINEL", "get-master-addr-by-name", MASTER_NAME)
            finally:
                c.close()
        except OSError:
            continue
        if isinstance(addr, list) and len(addr) == 2:
            return int(addr[1])
    return None


def connect_master(sentinels):
    """A connection to the instance Sentinel names as master, checked with ROLE (as the
    Sentinel client guidelines ask: a stale answer may name a demoted instance), or None."""
    port = master_from_sentinels(sentinels)
    if port is None:
        return None
    try:
        c = Conn(port)
        role = c.call("ROLE")
    except OSError:
        return None
    if isinstance(role, list) and role and role[0] == b"master":
        return c
    c.close()
    return None


def write(ready_file, deadline_s, sentinels):
    deadline = time.monotonic() + deadline_s
    acked = []  # (ack time, port of the master that acknowledged, n): every acknowledged write
    first_port = None
    first_new_ack = None  # time of the first write acknowledged by another master
    unknown = 0  # writes sent whose answer never came (outcome unknown, not counted as acked)
    n = 0
    conn = None
    while time.monotonic() < deadline:
        if first_new_ack is not None and time.time() - first_new_ack >= AFTER_S:
            break
        if conn is None:
            conn = connect_master(sentinels)
            if conn is None:
                time.sleep(RETRY_S)
                continue
        n += 1
        try:
            reply = conn.call("SET", f"k{n}", n)
        except OSError:  # ConnectionError and socket.timeout are OSErrors
            unknown += 1
            conn.close()
            conn = None
            continue
        if reply != "OK":  # e.g. READONLY from a demoted master: ask Sentinel again
            conn.close()
            conn = None
            continue
        t = time.time()
        acked.append((t, conn.port, n))
        if first_port is None:
            first_port = conn.port
            open(ready_file, "w").close()
        elif conn.port != first_port and first_new_ack is None:
            first_new_ack = t
    if conn is not None:
        conn.close()

    # Read every acknowledged key back from the master as Sentinel now reports it.
    final = None
    for _ in range(200):
        final = connect_master(sentinels)
        if final is not None:
            break
        time.sleep(0.05)
    lost = []
    if final is not None:
        batch = 1000
        for i in range(0, len(acked), batch):
            part = acked[i:i + batch]
            values = final.call("MGET", *(f"k{w[2]}" for w in part))
            lost += [w for w, v in zip(part, values) if v != str(w[2]).encode()]
        final_port = final.port
        final.close()
    else:
        final_port = 0
        lost = acked
    on_old = sum(1 for w in acked if w[1] == first_port)
    last_old = max((w[0] for w in acked if w[1] == first_port), default=0.0)
    fields = {
        "old_master": first_port or 0,
        "new_master": final_port,
        "failed_over": int(first_new_ack is not None),
        "first_new_ack": f"{first_new_ack or 0:.6f}",
        "last_old_ack": f"{last_old:.6f}",
        "acked": len(acked),
        "acked_old": on_old,
        "acked_new": len(acked) - on_old,
        "unknown": unknown,
        "lost": len(lost),
        "lost_keys": ",".join(f"k{w[2]}" for w in lost[:20]) or "-",
    }
    print(" ".join(f"{k}={v}" for k, v in fields.items()))


EVENTS = ["+sdown", "+odown", "+elected-leader", "+failover-state-wait-promotion",
          "+promoted-slave", "+switch-master"]


def events(kill_time, logs):
    # A sentinel log line: "PID:X 01 Dec 2026 14:00:00.123 # +odown master mymaster ...",
    # in local time with milliseconds. Only events about the master count (+sdown of a
    # sentinel or replica can appear too).
    first = {}
    for path in logs:
        with open(path, errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 8 or parts[6] not in EVENTS:
                    continue
                if parts[6] in ("+sdown", "+odown") and parts[7] != "master":
                    continue
                stamp = " ".join(parts[1:5])
                whole, ms = stamp.rsplit(".", 1)
                t = time.mktime(time.strptime(whole, "%d %b %Y %H:%M:%S")) + int(ms) / 1000
                first[parts[6]] = min(first.get(parts[6], t), t)
    print(" ".join(
        f"{e.lstrip('+')}={first[e] - kill_time:.3f}" if e in first else f"{e.lstrip('+')}=-"
        for e in EVENTS))


def main():
    if len(sys.argv) >= 5 and sys.argv[1] == "write":
        write(sys.argv[2], float(sys.argv[3]), [int(p) for p in sys.argv[4:]])
    elif len(sys.argv) >= 4 and sys.argv[1] == "events":
        events(float(sys.argv[2]), sys.argv[3:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
