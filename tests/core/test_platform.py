"""Per-agent limits and the maximum number of agents, over injected platforms."""

from __future__ import annotations

import os

import pytest

from parallel_autopilot import platform as pf
from parallel_autopilot.errors import InvalidInput
from parallel_autopilot.platform import GIB, MIB, Limits, Platform

# the design's two machines and the CI/dev machine of this project
WORKSTATION = Platform(os="linux", arch="x86_64", cpus=28, memory_total=128 * GIB, memory_available=100 * GIB)
MACBOOK = Platform(os="macos", arch="arm64", cpus=12, memory_total=16 * GIB, memory_available=8 * GIB)
CI = Platform(os="linux", arch="x86_64", cpus=2, memory_total=24 * GIB, memory_available=20 * GIB)


def S(**values):
    """Settings-like mapping with the defaults that matter here (typed, checked values:
    config.load refuses bad ones, see test_config_keys.py)."""
    return {"profile": "auto", "agent_kind": "codex", "memory": None, "cpus": None,
            "pids_limit": 512, "max_agents": None, **values}


def test_linux_workstation_full_profile_is_the_designs_12g_4_cpus_10_agents():
    assert pf.limits(S(), WORKSTATION) == Limits(memory="12g", cpus=4.0, pids=512, max_agents=10, profile="full")


def test_macbook_full_profile_is_3g_2_cpus_5_agents():
    assert pf.limits(S(), MACBOOK) == Limits(memory="3g", cpus=2.0, pids=512, max_agents=5, profile="full")


def test_small_host_full_profile_clamps_cpus_and_fits_memory():
    # 24 GiB - 1.5 GiB reserve = 22.5 GiB: one 12g agent; 4 CPUs refused by Docker on 2
    assert pf.limits(S(), CI) == Limits(memory="12g", cpus=2.0, pids=512, max_agents=1, profile="full")


def test_light_profile_lets_ten_script_agents_share_two_cores():
    limits = pf.limits(S(agent_kind="script"), CI)
    assert limits == Limits(memory="256m", cpus=0.5, pids=512, max_agents=10, profile="light")
    assert limits.memory_bytes == 256 * MIB


def test_macos_light_profile_still_capped_at_five():
    assert pf.limits(S(agent_kind="script"), MACBOOK).max_agents == 5


@pytest.mark.parametrize("kind, profile", [("script", "light"), ("codex", "full"), ("claude", "full"),
                                           ("command", "full")])
def test_auto_profile_follows_agent_kind(kind, profile):
    assert pf.profile_for(S(agent_kind=kind)) == profile


def test_explicit_profile_wins_over_agent_kind():
    assert pf.limits(S(agent_kind="script", profile="full"), WORKSTATION).memory == "12g"
    assert pf.limits(S(agent_kind="codex", profile="light"), WORKSTATION).memory == "256m"


def test_memory_bounds_the_number_of_agents():
    # 32 GiB host, 2 GiB reserve: 30 GiB / 12 GiB = 2 agents
    host = Platform(os="linux", arch="x86_64", cpus=16, memory_total=32 * GIB, memory_available=30 * GIB)
    assert pf.limits(S(), host).max_agents == 2
    assert pf.limits(S(memory="4g"), host).max_agents == 7


def test_per_agent_memory_is_clamped_to_what_the_host_has():
    host = Platform(os="linux", arch="x86_64", cpus=4, memory_total=8 * GIB, memory_available=6 * GIB)
    limits = pf.limits(S(), host)
    assert limits.memory == "7g" and limits.max_agents == 1  # 8 GiB - 1 GiB reserve


def test_overrides_for_memory_cpus_and_max_agents():
    limits = pf.limits(S(memory="1.5g", cpus=3.0, max_agents=20, pids_limit=128), WORKSTATION)
    assert limits == Limits(memory="1536m", cpus=3.0, pids=128, max_agents=20, profile="full")


def test_explicit_cpus_are_clamped_to_the_host():
    assert pf.limits(S(cpus=8), CI).cpus == 2.0


def test_docker_vm_smaller_than_the_host_is_what_counts():
    # Docker Desktop's VM: 4 CPUs and 8 GiB on a 12-core 16 GiB Mac
    mac = Platform(os="macos", arch="arm64", cpus=12, memory_total=16 * GIB, memory_available=8 * GIB,
                   docker_cpus=4, docker_memory=8 * GIB)
    assert pf.limits(S(), mac) == Limits(memory="3g", cpus=2.0, pids=512, max_agents=2, profile="full")
    assert pf.limits(S(cpus=6), mac).cpus == 4.0


@pytest.mark.parametrize("text, size", [("12g", 12 * GIB), ("512m", 512 * MIB), ("1.5g", 1536 * MIB),
                                        ("65536k", 64 * MIB), ("256M", 256 * MIB), ("1gb", GIB),
                                        (1024, 1024), ("2048", 2048)])
def test_parse_memory(text, size):
    assert pf.parse_memory(text) == size


@pytest.mark.parametrize("bad", ["", "12x", "-1g", "0", "g", None])
def test_parse_memory_refuses_nonsense(bad):
    with pytest.raises(InvalidInput):
        pf.parse_memory(bad)


@pytest.mark.parametrize("size, text", [(12 * GIB, "12g"), (768 * MIB, "768m"), (1000 * 1024, "1000k"),
                                        (1536 * MIB, "1536m"), (1000, "1000")])
def test_format_memory_is_exact(size, text):
    assert pf.format_memory(size) == text
    assert pf.parse_memory(text) == size


def test_reserve_is_a_sixteenth_between_one_and_four_gib():
    assert pf.reserve(8 * GIB) == GIB
    assert pf.reserve(32 * GIB) == 2 * GIB
    assert pf.reserve(512 * GIB) == 4 * GIB


def test_detect_reads_this_host():
    host = pf.detect({"NCPU": 2, "MemTotal": 4 * GIB})
    assert host.cpus >= 1 and host.memory_total > 0 and host.arch
    assert host.docker_cpus == 2 and host.usable_cpus <= 2
    assert host.usable_memory <= 4 * GIB


def test_limits_work_with_real_settings(tmp_path, git_repo):
    from parallel_autopilot import config

    settings = config.load(repo=git_repo, agent_kind="script")
    limits = pf.limits(settings, CI)
    assert (limits.profile, limits.memory, limits.pids) == ("light", "256m", 512)


def test_check_filesystem_is_the_platform_seam_the_queue_uses(tmp_path):
    from parallel_autopilot import issues
    from parallel_autopilot import platform as host
    from parallel_autopilot.errors import UnsafeFilesystem

    base = os.path.realpath(tmp_path)
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(f"36 1 0:1 / / rw - ext4 /dev/sda1 rw\n"
                         f"40 36 0:2 / {base}/share rw - nfs4 server:/x rw\n")
    assert host.filesystem_type(tmp_path / "share" / "deep", str(mountinfo)) == "nfs4"
    with pytest.raises(UnsafeFilesystem, match="on nfs4, .*set autopilot.state_dir"):
        host.check_filesystem(tmp_path / "share" / ".autopilot", str(mountinfo))
    host.check_filesystem(tmp_path / "local", str(mountinfo))
    assert issues.check_filesystem is host.check_filesystem  # one implementation
