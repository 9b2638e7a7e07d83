#!/usr/bin/env python3
"""One CreateSnapshot call's time, segment by segment, from a system-wide syscall trace.

Record while `bench/limit.sh spread 1 20s` runs (bench/README.md, issue 19):

    perf record -a -o calls.perf -e 'syscalls:sys_enter_sendto,syscalls:sys_exit_sendto,\
    syscalls:sys_enter_recvfrom,syscalls:sys_exit_recvfrom,syscalls:sys_enter_writev,\
    syscalls:sys_exit_writev,syscalls:sys_enter_write,syscalls:sys_exit_write,\
    syscalls:sys_enter_futex,syscalls:sys_exit_futex' -- sleep 1
    perf script -i calls.perf -F comm,pid,tid,cpu,time,event,trace > calls.txt
    bench/call_timeline.py calls.txt SERVER_PID CLIENT_PID SERVER_GRPC_FD CLIENT_GRPC_FD

(the gRPC sockets' fds are the ones the server `writev`s its answers to and the client its
requests). Prints the syscalls per call of each process, then the p50 of each segment: the
client's legs, the server's work before its first statement, between statements and after
COMMIT, and the database round trips of the call's own connection.
"""
import collections
import re
import statistics
import sys

path, server_pid, client_pid = sys.argv[1], sys.argv[2], sys.argv[3]
server_fd, client_fd = int(sys.argv[4]), int(sys.argv[5])
LINE = re.compile(r'^\s*(\S.*?)\s+(\d+)/(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)$')

pending, events, counts = {}, [], collections.Counter()
for line in open(path, errors='replace'):
    m = LINE.match(line)
    if not m:
        continue
    comm, pid, tid, _cpu, ts, event, args = m.groups()
    ts = float(ts)
    who = 'srv' if pid == server_pid else 'cli' if pid == client_pid else None
    if who is None:
        continue
    name = event.split(':')[-1]
    if name.startswith('sys_enter_'):
        fd = re.search(r'fd: (0x[0-9a-f]+)', args)
        pending[(tid, name[10:])] = (ts, int(fd.group(1), 16) if fd else None)
        continue
    started = pending.pop((tid, name[9:]), None)
    if started is None:
        continue
    t0, fd = started
    ret = int(args.strip().split()[-1], 16)
    if ret >= 1 << 63:
        ret -= 1 << 64
    call = name[9:]
    if call == 'futex':
        counts[(who, 'futex')] += 1
    elif ret <= 0:
        counts[(who, call + ' (nothing)')] += 1
    else:
        # write on a small fd with 8 bytes: tokio waking another worker thread (eventfd)
        kind = 'wake (eventfd write)' if call == 'write' and ret == 8 else call
        counts[(who, kind)] += 1
        events.append((t0, ts, who, call, fd, ret))
events.sort()

calls, current = [], None
for t0, t1, who, call, fd, ret in events:
    if who != 'srv':
        continue
    if call == 'recvfrom' and fd == server_fd and ret >= 60:
        current = {'request': t1, 'db': []}
    elif current and call == 'sendto' and fd != server_fd and current.setdefault('fd', fd) == fd:
        current['db'].append(('send', t0))
    elif current and call == 'recvfrom' and fd == current.get('fd'):
        current['db'].append(('recv', t1))
    elif current and call == 'writev' and fd == server_fd:
        current['response'] = t0
        calls.append(current)
        current = None

answered = sum(1 for e in events if e[2] == 'srv' and e[3] == 'writev' and e[4] == server_fd)
print(f'{answered} answers written in the trace; syscalls per answer:')
for (who, kind), n in sorted(counts.items()):
    print(f'  {who} {kind:24} {n / max(answered, 1):6.2f}')
segments = collections.defaultdict(list)
for c in calls:
    sends = [t for k, t in c['db'] if k == 'send']
    recvs = [t for k, t in c['db'] if k == 'recv']
    if len(sends) != 4 or len(recvs) < 4:
        continue
    answers = [min(t for t in recvs if t > s) for s in sends]
    segments['server: request read -> BEGIN sent'].append(sends[0] - c['request'])
    segments['database: 4 round trips'].append(sum(a - s for s, a in zip(sends, answers)))
    segments['server: between statements'].append(
        sum(s - a for a, s in zip(answers, sends[1:])))
    segments['server: COMMIT answered -> answer'].append(c['response'] - recvs[-1])
last = {}
for t0, t1, who, call, fd, ret in events:
    if who == 'cli' and call == 'writev' and fd == client_fd:
        if 'cli_read' in last and last.get('cli_write', 0) < last['cli_read']:
            segments['client: answer read -> next request'].append(t0 - last['cli_read'])
        last['cli_write'] = t0
    elif who == 'srv' and call == 'recvfrom' and fd == server_fd and ret >= 60 and 'cli_write' in last:
        segments['network: request'].append(t1 - last['cli_write'])
    elif who == 'srv' and call == 'writev' and fd == server_fd:
        last['srv_write'] = t0
    elif who == 'cli' and call == 'recvfrom' and fd == client_fd and 'srv_write' in last:
        segments['network: answer'].append(t1 - last['srv_write'])
        last['cli_read'] = t1
for name, values in segments.items():
    print(f'{name:40} p50 {statistics.median(values) * 1e6:7.0f} µs  (n={len(values)})')
