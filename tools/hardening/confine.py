#!/usr/bin/python3
"""Run a program under the seccomp confinement that systemd/agentd.service asks of systemd.

Where systemd is not PID 1 (containers, CI machines) `systemd-run -p ...` cannot apply the unit's
properties, so this launcher applies the ones that can break a Swift program at run time, the way
systemd does them, then execs the program:

  SystemCallFilter=...          an allow-list filter built from the unit's own lines, with the
                                syscall groups expanded by this machine's `systemd-analyze
                                syscall-filter` (the same tables systemd uses); everything else
                                fails with SystemCallErrorNumber (EPERM)
  MemoryDenyWriteExecute=yes    systemd's seccomp rules: mmap with PROT_WRITE|PROT_EXEC,
                                mprotect/pkey_mprotect with PROT_EXEC, shmat with SHM_EXEC fail;
                                plus the kernel's PR_SET_MDWE where the kernel has it (6.3+)
  RestrictAddressFamilies=...   socket() with another family fails with EAFNOSUPPORT
  NoNewPrivileges=yes           set before the filters load

usage: confine.py UNIT_FILE PROGRAM [ARG...]
Exit 97: python3-seccomp is missing; 98: the unit has no SystemCallFilter; the program's own
exit status otherwise. Every syscall a confined agentd is refused is an error it must survive.
"""
import errno
import os
import socket
import subprocess
import sys

try:
    import seccomp
except ImportError:
    print("confine.py: python3-seccomp is not installed (apt-get install python3-seccomp)", file=sys.stderr)
    sys.exit(97)


def unit_values(path, key):
    values = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith(key + "="):
                values.append(line[len(key) + 1:].strip())
    return values


def expand(name, seen=None):
    """The syscalls of a name: itself, or a @group expanded recursively by systemd-analyze."""
    if not name.startswith("@"):
        return {name}
    seen = seen if seen is not None else set()
    if name in seen:
        return set()
    seen.add(name)
    out = subprocess.run(["systemd-analyze", "syscall-filter", name], capture_output=True, text=True, check=True).stdout
    calls = set()
    for line in out.splitlines()[1:]:
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        calls |= expand(item, seen)
    return calls


def allowed_syscalls(unit):
    allowed, denied = None, set()
    for value in unit_values(unit, "SystemCallFilter"):
        invert = value.startswith("~")
        names = set()
        for item in value.lstrip("~").split():
            names |= expand(item)
        if invert:
            if allowed is None:
                denied |= names
            else:
                allowed -= names
        elif allowed is None:
            allowed = names - denied
        else:
            allowed |= names
    return allowed


def errno_of(unit):
    values = unit_values(unit, "SystemCallErrorNumber")
    return getattr(errno, values[-1]) if values else errno.EPERM


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    unit, program = sys.argv[1], sys.argv[2:]
    allowed = allowed_syscalls(unit)
    if not allowed:
        print(f"confine.py: {unit} has no SystemCallFilter allow list", file=sys.stderr)
        sys.exit(98)

    if "yes" in unit_values(unit, "MemoryDenyWriteExecute"):
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(65, 1, 0, 0, 0)  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN; EINVAL before Linux 6.3
        mdwe = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
        prot_exec, prot_write, shm_exec = 0x4, 0x2, 0o100000
        mdwe.add_rule(seccomp.ERRNO(errno.EPERM), "mmap",
                      seccomp.Arg(2, seccomp.MASKED_EQ, prot_exec | prot_write, prot_exec | prot_write))
        for call in ("mprotect", "pkey_mprotect"):
            mdwe.add_rule(seccomp.ERRNO(errno.EPERM), call, seccomp.Arg(2, seccomp.MASKED_EQ, prot_exec, prot_exec))
        mdwe.add_rule(seccomp.ERRNO(errno.EPERM), "shmat", seccomp.Arg(2, seccomp.MASKED_EQ, shm_exec, shm_exec))
        mdwe.load()

    families = " ".join(unit_values(unit, "RestrictAddressFamilies")).split()
    if families:
        keep = {getattr(socket, f) for f in families}
        restrict = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
        for family in range(0, 64):
            if family not in keep:
                restrict.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.EQ, family))
        restrict.load()

    # Loaded last: the filters above need prctl and seccomp, which the allow list may not include.
    # execve is in @process; the program's own start-up runs under every filter.
    f = seccomp.SyscallFilter(defaction=seccomp.ERRNO(errno_of(unit)))
    for call in sorted(allowed):
        try:
            f.add_rule(seccomp.ALLOW, call)
        except (RuntimeError, ValueError, OSError):
            pass  # a name this architecture does not have
    f.load()
    os.execv(program[0], program)


if __name__ == "__main__":
    main()
