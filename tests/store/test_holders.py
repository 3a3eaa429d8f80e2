"""Who holds a run, and whether it is alive: this process, a process that has exited, a reused pid, another boot,
a requeued SLURM task's earlier start, a host nothing here can check."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import replace

from pipeline.store import holders
from pipeline.store.holders import Holder


def exited_process() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_holder_round_trips_through_its_tags():
    me = Holder.current()
    assert me.host == socket.gethostname() and me.pid == os.getpid() and me.start and me.boot
    assert Holder.from_tags(me.tags()) == me
    assert Holder.from_tags({"stage": "embed"}) is None  # a run made before holders were recorded


def test_on_its_own_host_a_holder_is_alive_only_while_its_process_runs():
    me = Holder.current()
    assert holders.alive(me) is True
    assert holders.alive(replace(me, pid=exited_process(), start="")) is False
    assert holders.alive(replace(me, start=str(int(me.start) + 1))) is False  # the pid was reused since
    assert holders.alive(replace(me, boot="another-boot")) is False  # the machine rebooted since


def test_a_requeued_task_takes_its_own_earlier_start_for_dead():
    earlier = Holder("node-7", 4242, "1", "boot", slurm_job="1234", slurm_restarts=0)
    requeued = Holder("node-9", 77, "1", "boot", slurm_job="1234", slurm_restarts=1)
    assert holders.alive(earlier, me=requeued) is False


def test_a_holder_on_another_host_without_slurm_cannot_be_checked():
    assert holders.alive(Holder("node-without-slurm", 4242, "1", "boot")) is None


def test_the_start_time_is_read_past_a_command_name_with_spaces_and_parentheses():
    code = "import time; open('/proc/self/comm', 'w').write('odd) (na me'); print('ready', flush=True); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        assert "(odd) (na me)" in open(f"/proc/{child.pid}/stat").read()
        start = holders.process_start(child.pid)
        assert start is not None and start.isdigit()
        assert holders.alive(Holder(socket.gethostname(), child.pid, start, holders.boot_id())) is True
    finally:
        child.kill()
        child.wait()
