# Plays a USB keyboard-wedge scanner on a real pseudo-terminal for tests:
# opens a pty pair, prints the slave's path, then types each line read from
# stdin into the master (as keystrokes ending in CR), until stdin closes.
import os, pty, sys, termios, tty

master, slave = pty.openpty()
attrs = termios.tcgetattr(slave)
attrs[3] &= ~termios.ECHO  # a scanner's keystrokes are not echoed back
termios.tcsetattr(slave, termios.TCSANOW, attrs)
print(os.ttyname(slave), flush=True)
for line in sys.stdin:
    os.write(master, line.rstrip("\n").encode() + b"\r")
os.close(master)
