# A stand-in for systemd's notify socket in tests: binds a unix datagram socket, closes any
# passed fds (that releases systemd-notify's BARRIER=1 wait, as PID 1 would) and prints each
# message as a JSON string line.
import socket, sys, os, array, json
path = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
print("listening", flush=True)
while True:
    fds = array.array("i")
    msg, anc, flags, addr = s.recvmsg(4096, socket.CMSG_SPACE(16 * fds.itemsize))
    for level, typ, data in anc:
        if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    for fd in fds:
        os.close(fd)
    print(json.dumps(msg.decode()), flush=True)
